"""The main job end to end on real embedded data (`configs/nmtune.py:smoke`), and the workdir contract."""

import csv
import json
import os

import numpy as np
import pytest

from nml_jax import config_lib, features, main, results

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config(name, arg=None, **overrides):
    config = config_lib.load_config(os.path.join(CONFIGS, name) + (f":{arg}" if arg else ""))
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("main_job"))
    out = main.run(_config("nmtune.py", "smoke"), workdir)
    return workdir, out


@pytest.mark.slow
def test_smoke_job_writes_the_workdir_contract(smoke):
    workdir, _ = smoke
    for name in (
        "config.json",
        "metrics.jsonl",
        "noise.npz",
        "spectrum.json",
        "results.csv",
        "report.md",
    ):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert os.listdir(os.path.join(workdir, "checkpoints"))
    for figure in ("spectrum.png", "spectrum_vs_accuracy.png"):
        assert os.path.getsize(os.path.join(workdir, "figures", figure)) > 0, figure
    with np.load(os.path.join(workdir, "noise.npz")) as f:
        assert f["is_noisy"].sum() == round(0.1 * len(f["clean_labels"]))
        np.testing.assert_allclose(f["transition"].sum(axis=1), 1.0)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["stage"] == "nmtune"
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert all(np.isfinite(json.loads(line).get("train_loss", 0.0)) for line in f)

    with open(os.path.join(workdir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == results.COLUMNS
    assert {r["method"] for r in rows} == {"lp", "mlp", "nmtune"}
    assert {r["kind"] for r in rows} == {"id", "ood"}
    id_tasks = {r["task"] for r in rows if r["kind"] == "id"}
    assert id_tasks == {"fashion_mnist", "mnist5k", "uci_digits"}
    ood_domains = {r["test_domain"] for r in rows if r["kind"] == "ood"}
    assert {"uci_digits", "mnist_m", "printed_digits", "fashion_mnist_sketch"} <= ood_domains
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert all(float(r["noise_ratio"]) == 0.1 and r["seed"] == "0" for r in rows)
    # Three methods for every (task, test domain).
    assert len(rows) == 3 * len({(r["task"], r["test_domain"]) for r in rows})

    with open(os.path.join(workdir, "spectrum.json")) as f:
        spectrum = json.load(f)
    assert spectrum["centering"] == "row"
    for entry in spectrum["test_sets"].values():
        assert entry["sve"] > 0 and entry["lsvr"] > 0
        assert len(entry["singular_values"]) == min(entry["dim"], entry["count"])
    with open(os.path.join(workdir, "report.md")) as f:
        report = f.read()
    assert "NMTune" in report and "Out-of-domain" in report


@pytest.mark.slow
def test_second_start_reuses_everything(smoke):
    workdir, first = smoke
    config = _config("nmtune.py", "smoke")
    before = os.path.getmtime(os.path.join(workdir, "transfer_done.json"))
    again = main.run(config, workdir)
    assert os.path.getmtime(os.path.join(workdir, "transfer_done.json")) == before
    assert [r.accuracy for r in again["rows"]] == [r.accuracy for r in first["rows"]]


@pytest.mark.slow
def test_probe_on_exported_features_npz(smoke, tmp_path):
    """The black-box path: features exported to .npz are probed like the encoder's own."""
    workdir, first = smoke
    config = _config("nmtune.py", "smoke")
    task_features, _ = features.load_task_features(config, workdir)
    digits = [t for t in task_features if t.train_domain == "mnist5k"]
    path = str(tmp_path / "mnist5k.npz")
    features.save_npz(path, digits)
    probe = _config("probe.py", None, features_npz=path, noise_ratio=0.1)
    probe.transfer.lp.epochs = 2
    out = main.run(probe, str(tmp_path / "probe"))
    by_domain = {r.test_domain: r.accuracy for r in out["rows"]}
    expected = {
        r.test_domain: r.accuracy
        for r in first["rows"]
        if r.train_domain == "mnist5k" and r.method == "lp"
    }
    assert set(by_domain) == {"mnist5k", *(d for d in expected if d != "mnist5k")}
    for domain, acc in expected.items():
        assert by_domain[domain] == pytest.approx(acc, abs=1e-6), domain

    # The nmtune stage on the same file: no pre-training, and a report that names the file.
    tuned = _config("nmtune.py", "smoke", features_npz=path)
    out = main.run(tuned, str(tmp_path / "nmtune"))
    assert not os.path.exists(tmp_path / "nmtune" / "checkpoints")
    assert {r.method for r in out["rows"]} == {"lp", "mlp", "nmtune"}
    with open(tmp_path / "nmtune" / "report.md") as f:
        assert path in f.readline()
