"""Every paper path end to end on stand-in TFDS datasets (tests/standin.py: the real names, versions and feature
specs, JPEGs of 60x80 and 300x200), a few steps or images each: noisy ImageNet pre-training (streamed), CIFAR
pre-training, probes on the paper_id, DomainNet and ImageNet OOD suites, and CLIP on two TFRecord shards.

The configs are the real ones (configs/*.py), shrunk only where CPU time demands it (model size, image size,
steps), never in the path they take.
"""

import os

import ml_collections
import numpy as np
import pytest
import standin

from nml_jax import config_lib, defaults, features, main, noise, tasks
from nml_jax.data import captions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 32 px instead of 224: the same ops, a CPU-sized image.
PP_TRAIN = "decode_jpeg_and_inception_crop(32)|flip_lr|value_range(0, 1)|normalize"
PP_EVAL = "decode|resize_small(36)|central_crop(32)|value_range(0, 1)|normalize"
# Instead of the configs' ResNets: the path is the same, the XLA compile takes seconds instead of a minute.
_SMALL_CNN = {"name": "cnn", "dtype": "float32", "widths": (8, 16), "feature_dim": 32}


def _config(spec: str, **fields):
    config = config_lib.load_config(os.path.join(ROOT, "configs", spec))
    for key, value in fields.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    return standin.write_all(str(tmp_path_factory.mktemp("standin_tfds")))


@pytest.fixture(scope="module")
def imagenet_workdir(standin_dir, tmp_path_factory):
    """configs/pretrain_imagenet.py:noise=0.1,smoke on the stand-in imagenet2012, streamed: a small CNN."""
    workdir = str(tmp_path_factory.mktemp("in1k_n10"))
    config = _config(
        "pretrain_imagenet.py:noise=0.1,smoke",
        data_dir=standin_dir,
        **{
            "input.batch_size": 8,
            "input.eval_batch_size": 8,
            "input.pp_train": PP_TRAIN,
            "input.pp_eval": PP_EVAL,
            "input.shuffle_buffer": 16,
        },
    )
    config.model = ml_collections.ConfigDict(_SMALL_CNN)
    result = main.run(config, workdir)
    return workdir, result


def test_pretrain_imagenet_streamed_with_noise(imagenet_workdir):
    workdir, result = imagenet_workdir
    record = noise.load(os.path.join(workdir, noise.NOISE_FILE))
    assert int(np.sum(record["is_noisy"])) == round(
        0.1 * standin.PAPER_SPLITS["imagenet2012"]["train"]
    )
    summary = result["summary"]
    assert summary["test_examples"] == standin.PAPER_SPLITS["imagenet2012"]["validation"]
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(workdir, "model.json"))


def test_pretrain_cifar(standin_dir, tmp_path):
    config = _config(
        "pretrain_cifar.py:smoke",
        data_dir=standin_dir,
        **{"input.batch_size": 8, "input.eval_batch_size": 8},
    )
    config.model = ml_collections.ConfigDict(_SMALL_CNN)
    result = main.run(config, str(tmp_path))
    assert result["summary"]["test_examples"] == standin.PAPER_SPLITS["cifar10"]["test"]


@pytest.mark.parametrize(
    "suite", ["paper_id", "domainnet_real", "domainnet_sketch", "imagenet_ood"]
)
def test_probe_suites(standin_dir, imagenet_workdir, tmp_path, suite):
    """configs/probe.py:suite=... on the ImageNet stand-in encoder: every task, every test domain, one LP epoch."""
    workdir, _ = imagenet_workdir
    config = _config(
        f"probe.py:suite={suite}",
        pretrained=workdir,
        data_dir=standin_dir,
        feature_batch_size=8,
        **{"transfer.lp.epochs": 1, "transfer.lp.batch_size": 8, "transfer.lp.eval_batch_size": 8},
    )
    result = main.run(config, str(tmp_path))
    rows = result["rows"]
    expected = {(t.name, d.name) for t in tasks.SUITES[suite]() for d in t.tests}
    assert {(r.task, r.test_domain) for r in rows} == expected
    assert all(0.0 <= r.accuracy <= 1.0 for r in rows)
    if suite == "imagenet_ood":  # Read back from the feature cache the run wrote.
        (task,), _ = features.load_task_features(config, str(tmp_path))
        assert sorted(task.test_classes) == ["imagenet_a", "imagenet_r"]
        assert all(len(c) == 200 for c in task.test_classes.values())


def test_clip_yfcc15m_on_two_shards(standin_dir, tmp_path):
    """configs/clip_yfcc15m.py on two TFRecord shards of different image sizes, caption-swap noise, and a
    streamed zero-shot evaluation. Zero-shot runs on the CIFAR-10 stand-in: ImageNet's 80,000 prompts cost ~45 s
    of tokenizing on 2 cores (their names and templates are checked in test_paper_data)."""
    rng = np.random.default_rng(0)
    names = ["cat", "dog", "car", "ship"]
    texts = [f"a photo of a {names[i % 4]} number {i}" for i in range(16)]
    small = rng.integers(0, 255, (8, 60, 80, 3), dtype=np.uint8)
    large = rng.integers(0, 255, (8, 300, 200, 3), dtype=np.uint8)
    captions.write_shards(str(tmp_path / "a"), small, texts[:8], 1)
    captions.write_shards(str(tmp_path / "b"), large, texts[8:], 1)
    config = _config(
        "clip_yfcc15m.py:noise=0.2",
        shards=str(tmp_path / "*.tfrecord"),
        total_steps=2,
        total_epochs=None,
        warmup_steps=0,
        **{
            "zero_shot.data_dir": standin_dir,
            "zero_shot.dataset": "cifar10",
            "zero_shot.split": "test",
            "input.batch_size": 8,
            "input.eval_batch_size": 8,
            "input.shuffle_buffer": 16,
            "input.pp_train": PP_TRAIN,
            "input.pp_eval": PP_EVAL,
        },
    )
    config.model = defaults.clip_model("tiny")
    result = main.run(config, str(tmp_path / "work"))
    summary = result["summary"]
    assert summary["zero_shot_examples"] == standin.PAPER_SPLITS["cifar10"]["test"]
    assert 0.0 <= summary["zero_shot_accuracy"] <= 1.0
