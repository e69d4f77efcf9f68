"""results.csv merging and the report's verdicts on hand-made numbers."""

import math

import numpy as np

from nml_jax import report, results
from nml_jax.results import Row


def _rows(id_acc, ood_acc, method="lp"):
    """{(noise, seed): accuracy} -> rows for one ID and one OOD test set."""
    out = []
    for (noise, seed), acc in id_acc.items():
        out.append(Row("t", "id", "a", "a", method, noise, seed, acc))
    for (noise, seed), acc in ood_acc.items():
        out.append(Row("t_ood", "ood", "a", "b", method, noise, seed, acc))
    return out


def test_results_merge_replaces_same_key(tmp_path):
    path = str(tmp_path / "results.csv")
    results.write(
        path,
        [
            Row("t", "id", "a", "a", "lp", 0.1, 0, 0.5),
            Row("t", "id", "a", "a", "lp", math.nan, 0, 0.4),
        ],
    )
    merged = results.write(
        path,
        [
            Row("t", "id", "a", "a", "lp", 0.1, 0, 0.7),
            Row("t", "id", "a", "a", "lp", math.nan, 0, 0.6),
        ],
    )
    assert len(merged) == 2
    back = results.read(path)
    assert sorted(r.accuracy for r in back) == [0.6, 0.7]
    with open(path) as f:
        assert f.readline().strip() == ",".join(results.COLUMNS)


def test_paired_verdicts():
    assert report.paired_verdict(np.array([0.02, 0.03, 0.025])) == "supported"
    assert report.paired_verdict(np.array([-0.02, -0.03, -0.025])) == "contradicted"
    assert report.paired_verdict(np.array([0.02, -0.03, 0.01])) == "inconclusive"
    assert report.paired_verdict(np.array([0.5])) == "inconclusive (one seed)"


def test_claims_from_hand_made_study():
    seeds = (0, 1, 2)
    id_acc = {
        (n, s): 0.80 + (0.02 if n == 0.1 else 0) + 0.001 * s for n in (0.0, 0.1) for s in seeds
    }
    ood_acc = {(n, s): 0.50 - 0.5 * n + 0.002 * s for n in (0.0, 0.1) for s in seeds}
    rows = _rows(id_acc, ood_acc) + _rows(
        {k: v + 0.01 for k, v in id_acc.items()},
        {k: v - 0.01 for k, v in ood_acc.items()},
        "nmtune",
    )
    spectra = {
        (n, s): {"sve": 3.0 + n + 0.01 * s, "lsvr": 1.0 - n} for n in (0.0, 0.1) for s in seeds
    }
    verdicts = {c: v for c, v, _ in report.claims(rows, spectra)}
    assert verdicts["Slight noise (5-10%) raises ID accuracy (LP)"] == "supported"
    assert verdicts["Any noise lowers OOD accuracy (LP)"] == "supported"
    assert verdicts["Noise raises SVE"] == "supported"
    assert verdicts["Noise raises LSVR"] == "contradicted"
    assert verdicts["NMTune beats LP (ID)"] == "supported"
    assert verdicts["NMTune beats LP (OOD)"] == "contradicted"


def test_accuracy_table_mean_and_spread():
    rows = _rows({(0.0, 0): 0.5, (0.0, 1): 0.7}, {})
    table = report.accuracy_table(rows, "id")
    assert "| 0 | 2 | 60.0 ± 14.1 |" in table
