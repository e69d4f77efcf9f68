"""Workdirs given as URLs, end to end on TensorFlow's in-memory `ram://` file system (through tf.io.gfile, as
gs:// is): the files module, the lock, the noise stage with its resume and overwrite, and the main job on
black-box features. Orbax cannot write to ram:// (TensorStore has no such driver), so checkpoints are tested
only for passing gs:// paths to Orbax unchanged and for a clear refusal of schemes Orbax cannot write."""

import csv
import io
import json
import os
import uuid

import numpy as np
import pytest

from nml_jax import checkpoint, config_lib, encoders, features, files, main, metrics, tasks, workdir
from tests.test_features import CountingEncoder

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config(spec):
    return config_lib.load_config(os.path.join(CONFIGS, spec))


@pytest.fixture
def url():
    """A fresh ram:// directory (the file system lives as long as the process; each test gets its own)."""
    base = f"ram://nml_test_{uuid.uuid4().hex[:8]}"
    yield base
    files.rmtree(base)


def test_files_read_write_and_move_on_a_url(url):
    files.write_json(f"{url}/a/b/x.json", {"k": 1})
    files.write_text(f"{url}/a/c.txt", "text")
    files.write_npz(f"{url}/n.npz", {"x": np.arange(3)})
    assert files.read_json(f"{url}/a/b/x.json") == {"k": 1}
    assert files.read_json(f"{url}/absent.json", default="none") == "none"
    assert files.read_text(f"{url}/a/c.txt") == "text"
    with files.load_npz(f"{url}/n.npz") as f:
        np.testing.assert_array_equal(f["x"], np.arange(3))
    assert files.listdir(url) == ["a", "n.npz"]
    assert files.glob(f"{url}/a/*.txt") == [f"{url}/a/c.txt"]
    assert (
        files.isdir(f"{url}/a") and files.isfile(f"{url}/a/c.txt") and not files.isfile(f"{url}/a")
    )
    with pytest.raises(files.FileFormatError, match="is a directory"):
        files.read_json(f"{url}/a")

    files.move(f"{url}/a", f"{url}/moved/a")
    assert not files.exists(f"{url}/a/c.txt")
    assert sorted(
        os.path.relpath(os.path.join(d, n), url) for d, _, ns in files.walk(url) for n in ns
    ) == [
        "moved/a/b/x.json",
        "moved/a/c.txt",
        "n.npz",
    ]
    files.remove(f"{url}/n.npz")
    with pytest.raises(FileNotFoundError):
        files.remove(f"{url}/n.npz")
    files.rmtree(f"{url}/moved")
    assert files.listdir(url) == []


def test_figures_are_the_same_bytes_locally_and_on_a_url(url, tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    plt.plot([1, 3, 2])
    fig.savefig(tmp_path / "direct.png", dpi=50)
    files.save_figure(fig, str(tmp_path / "saved.png"), dpi=50)
    files.save_figure(fig, f"{url}/figures/saved.png", dpi=50)
    plt.close(fig)
    direct = (tmp_path / "direct.png").read_bytes()
    assert direct[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "saved.png").read_bytes() == direct
    assert files.read_bytes(f"{url}/figures/saved.png") == direct


def test_lock_on_a_url_is_held_and_released(url):
    with workdir.lock(url):
        holder = json.loads(files.read_text(f"{url}/{workdir.LOCK_FILE}"))
        assert holder["pid"] == os.getpid()
        with (
            pytest.raises(workdir.WorkdirError, match=f"in use by another run .*pid {os.getpid()}"),
            workdir.lock(url),
        ):
            pass
    assert not files.exists(f"{url}/{workdir.LOCK_FILE}")


def _noise(ratio, **overrides):
    config = _config(f"noise.py:ratio={ratio}")
    config.train_split = "train[:500]"
    config.update(overrides)
    return config


def test_noise_stage_in_a_url_workdir_resumes_refuses_and_overwrites(url):
    run = f"{url}/run"
    first = main.run(_noise(0.1), run)["noise"]
    assert json.loads(files.read_text(f"{run}/config.json"))["noise"]["ratio"] == 0.1
    with files.load_npz(f"{run}/noise.npz") as f:
        assert f["is_noisy"].sum() == 50
        np.testing.assert_array_equal(f["noisy_labels"], first["noisy_labels"])
    assert not files.exists(f"{run}/{workdir.LOCK_FILE}")

    again = main.run(_noise(0.1), run)["noise"]  # Reused, not made again.
    np.testing.assert_array_equal(again["noisy_labels"], first["noisy_labels"])

    with pytest.raises(workdir.WorkdirError, match=r"ratio: 0\.1 -> 0\.2"):
        main.run(_noise(0.2), run)
    assert main.run(_noise(0.2, overwrite=True), run)["corrupted"] == 100
    assert json.loads(files.read_text(f"{run}/config.json"))["noise"]["ratio"] == 0.2


def test_output_of_another_config_is_moved_aside_in_a_url_workdir(url):
    files.write_json(f"{url}/model.json", {"seed": 0})
    files.write_text(f"{url}/checkpoints/1/data", "weights")
    args = (url, "a model", {"seed": 0}, {"seed": 1}, ("model.json", "checkpoints", "absent"))
    with pytest.raises(workdir.WorkdirError, match=r"seed: 0 -> 1"):
        workdir.check_fingerprint(*args, overwrite=False)
    workdir.check_fingerprint(*args, overwrite=True)
    assert files.listdir(url) == [workdir.OVERWRITTEN_DIR]
    (aside,) = files.listdir(f"{url}/{workdir.OVERWRITTEN_DIR}")
    moved = f"{url}/{workdir.OVERWRITTEN_DIR}/{aside}"
    assert files.read_json(f"{moved}/model.json") == {"seed": 0}
    assert files.read_text(f"{moved}/checkpoints/1/data") == "weights"


def test_feature_cache_in_a_url_directory(url, tmp_path):
    domain = tasks.Domain("uci_digits", "nml_uci_digits", "test[:60]")
    encoder = CountingEncoder()
    made, labels = features.domain_features(
        encoder, domain, cache_dir=f"{url}/cache", chunk_size=32
    )
    (cached,) = files.glob(f"{url}/cache/*.npz")
    again, labels_again = features.domain_features(
        encoder, domain, cache_dir=f"{url}/cache", chunk_size=32
    )
    assert encoder.calls == 60  # The second call read the cache.
    np.testing.assert_array_equal(again, made)
    np.testing.assert_array_equal(labels_again, labels)
    local, _ = features.domain_features(
        CountingEncoder(), domain, cache_dir=str(tmp_path), chunk_size=32
    )
    np.testing.assert_array_equal(local, made)
    assert files.read_bytes(cached) == (tmp_path / os.path.basename(cached)).read_bytes()


def test_metrics_in_a_url_workdir_drop_records_after_the_resume_step(url):
    writer = metrics.MetricWriter(url)
    for step in (1, 2, 3):
        writer.write(step, {"loss": float(step)})
    writer.close()
    resumed = metrics.MetricWriter(url, resume_step=2)
    resumed.write(3, {"loss": 0.5})
    resumed.close()
    lines = files.read_text(f"{url}/{metrics.METRICS_FILE}").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 2.0},
        {"step": 3, "loss": 0.5},
    ]
    assert len(files.listdir(f"{url}/{metrics.TENSORBOARD_DIR}")) == 2  # One event file per writer.


def _features(path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)).astype(np.float32)
    labels = np.arange(96) % 3
    points = centres[labels] + 0.3 * rng.normal(size=(96, 8)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        train_features=points[:64],
        train_labels=labels[:64],
        test_features=points[64:80],
        test_labels=labels[64:80],
        ood_shift_features=points[80:] + 0.5,
        ood_shift_labels=labels[80:],
    )
    files.write_bytes(path, buffer.getvalue())
    return path


def _nmtune(features_npz):
    config = _config("nmtune.py:smoke")
    config.features_npz = features_npz
    return config


def test_main_job_on_black_box_features_in_a_url_workdir_matches_a_local_one(url, tmp_path):
    """The features file and the workdir are URLs; results, report, spectrum and figures land there, equal to
    the same run's in a local workdir, and a second start reuses them."""
    npz = _features(f"{url}/in/features.npz")
    run = f"{url}/run"
    out = main.run(_nmtune(npz), run)
    local = main.run(_nmtune(npz), str(tmp_path / "local"))
    for name in ("config.json", "results.csv", "spectrum.json", "report.md", "transfer_done.json"):
        assert files.read_bytes(f"{run}/{name}"), name
    assert (
        files.read_bytes(f"{run}/results.csv") == (tmp_path / "local" / "results.csv").read_bytes()
    )
    assert files.read_text(f"{run}/report.md").startswith(
        f"# LP, MLP and NMTune on the features in {npz}"
    )
    assert files.read_bytes(f"{run}/figures/spectrum.png")[:4] == b"\x89PNG"
    assert not files.exists(f"{run}/checkpoints")
    rows = list(csv.DictReader(io.StringIO(files.read_text(f"{run}/results.csv"))))
    assert {r["method"] for r in rows} == {"lp", "mlp", "nmtune"}
    assert [r.accuracy for r in out["rows"]] == [r.accuracy for r in local["rows"]]

    done = files.read_bytes(f"{run}/transfer_done.json")
    again = main.run(_nmtune(npz), run)
    assert files.read_bytes(f"{run}/transfer_done.json") == done
    assert [r.accuracy for r in again["rows"]] == [r.accuracy for r in out["rows"]]


def test_checkpoint_urls_reach_orbax_unchanged(monkeypatch):
    seen = []
    monkeypatch.setattr(checkpoint, "_manager", lambda directory, **_: seen.append(directory))
    ckpt = checkpoint.Checkpointer("gs://nml-test-bucket/run", async_save=False)
    assert ckpt.workdir == "gs://nml-test-bucket/run"
    assert seen == ["gs://nml-test-bucket/run/checkpoints"]
    checkpoint.check_location("s3://bucket/run")
    checkpoint.check_location("relative/local/run")


def test_checkpoints_on_a_scheme_orbax_cannot_write_are_refused_by_name(url):
    config = _config("pretrain.py:smoke")
    with pytest.raises(workdir.WorkdirError) as error:
        main.run(config, f"{url}/pre")
    assert main.error_line(error.value).startswith(
        f"Workdir error: --workdir={url}/pre: Orbax writes checkpoints only to local paths and gs://, s3:// "
        "URLs, not ram://."
    )
    with pytest.raises(workdir.WorkdirError, match=rf"^config\.init_from={url}/pre: Orbax writes"):
        checkpoint.restore_raw(f"{url}/pre")
    # A pre-trained encoder's workdir is read through files: a URL without a model card says so.
    with pytest.raises(encoders.ModelCardError, match="not a pre-training workdir"):
        encoders.read_card(f"{url}/pre")
