"""Stage `report`: one report and claims.json from results.csv files made anywhere."""

import json

import numpy as np
import pytest

from nml_jax import config_lib, main, results


def _rows(seed, *, noise_gain=0.0, methods=("lp", "mlp", "nmtune")):
    """Rows of one seed at noise 0 and 0.1 on one ID set and two OOD sets; OOD accuracy falls with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for noise in (0.0, 0.1):
        for method in methods:
            base = 0.8 + 0.01 * methods.index(method) + noise_gain * noise
            out.append(results.Row("digits", "id", "digits", "digits", method, noise, seed, base))
            for domain in ("shifted", "sketch"):
                acc = 0.5 - 0.5 * noise + rng.normal(0, 1e-3)
                out.append(
                    results.Row("digits_ood", "ood", "digits", domain, method, noise, seed, acc)
                )
    return out


def _config(tmp_path, paths, **overrides):
    config = config_lib.load_config("configs/report.py")
    config.results = ",".join(str(p) for p in paths)
    config.update(overrides)
    return config


def _write(path, rows):
    results.write(str(path), rows)
    return path


def test_report_from_files_of_several_machines(tmp_path):
    paths = [_write(tmp_path / f"machine{s}.csv", _rows(s)) for s in range(3)]
    workdir = tmp_path / "report"
    main.run(_config(tmp_path, paths, num_classes=10), str(workdir))
    claims = {c["claim"]: c for c in json.loads((workdir / "claims.json").read_text())}
    hurts = claims["noise_hurts_ood"]
    assert hurts["n_seeds"] == 3 and hurts["verdict"] == "supported"
    assert hurts["ci95"][0] > 0 and abs(hurts["estimate"] - 5.0) < 0.5  # 5 points lower at r = 0.1.
    assert claims["nmtune_beats_lp_id"]["verdict"] == "supported"  # +2 points in every run.
    assert (workdir / "report.md").exists() and (
        workdir / "figures" / "accuracy_vs_noise.png"
    ).exists()


def test_one_seed_says_too_few_seeds(tmp_path):
    workdir = tmp_path / "report"
    main.run(_config(tmp_path, [_write(tmp_path / "r.csv", _rows(0))]), str(workdir))
    verdicts = {c["verdict"] for c in json.loads((workdir / "claims.json").read_text())}
    assert verdicts <= {"too few seeds", "not testable"}


def test_bad_inputs_fail_with_a_clear_message(tmp_path):
    lp_only = _write(tmp_path / "lp.csv", _rows(1, methods=("lp",)))
    full = _write(tmp_path / "full.csv", _rows(0))
    with pytest.raises(config_lib.ConfigError, match="cannot be compared"):
        main.run(_config(tmp_path, [full, lp_only]), str(tmp_path / "w1"))
    with pytest.raises(config_lib.ConfigError, match="is not a file"):
        main.run(_config(tmp_path, [tmp_path / "missing.csv"]), str(tmp_path / "w2"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(config_lib.ConfigError, match=r"is not a results\.csv"):
        main.run(_config(tmp_path, [tmp_path / "bad.csv"]), str(tmp_path / "w3"))
    with pytest.raises(config_lib.ConfigError, match=r"config\.results is empty"):
        main.run(_config(tmp_path, []), str(tmp_path / "w4"))
