"""Pre-training: math helpers, configs, data parallelism, learning, resume, corruption, SIGKILL."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from nml_jax import (
    checkpoint,
    config_lib,
    data,
    encoders,
    losses,
    metrics,
    models,
    pretrain,
    trainer,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import pretrain as pretrain_config  # noqa: E402
from configs import pretrain_cifar, pretrain_imagenet  # noqa: E402


def tiny_config(**overrides):
    """A few-step CNN config on 32 random 8x8 images."""
    config = pretrain_config.get_config("smoke")
    config.train_examples = None
    config.model.update(widths=(4,), feature_dim=8)
    config.input.update(batch_size=16, eval_batch_size=16, pp_train="to_float", pp_eval="to_float")
    config.update(total_steps=8, log_every_steps=4, ckpt_every_steps=4, keep_checkpoints=3)
    for key, value in overrides.items():
        config[key] = value
    return config


def random_data(n=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n).astype(np.int32)
    return {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), "label": label}


def params_of(result):
    return jax.tree.map(np.asarray, jax.device_get(result["state"].params))


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_schedule_loss_and_counts_match_hand_values():
    schedule = trainer.learning_rate_schedule(1.0, total_steps=12, warmup_steps=2)
    np.testing.assert_allclose([schedule(0), schedule(1), schedule(2)], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(schedule(7), 0.5 * (1 + np.cos(np.pi * 5 / 10)), rtol=1e-6)
    logits = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))
    # eps = 0.3 over 3 classes: q = (0.8, 0.1, 0.1).
    expected = -(0.8 * np.log(0.7) + 0.1 * np.log(0.2) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(
        losses.smoothed_cross_entropy(logits, np.array([0]), 0.3), [expected], 1e-5
    )
    counts = pretrain.train_accuracy_counts(
        np.eye(3)[[0, 1, 2, 2]],
        np.array([0, 2, 2, 1]),
        np.array([0, 1, 2, 2]),
        np.array([False, True, False, True]),
    )
    assert {k: float(v) for k, v in counts.items()} == {
        "fit_clean": 2.0,
        "fit_noisy": 0.0,
        "true_noisy": 2.0,
        "n_clean": 2.0,
        "n_noisy": 2.0,
    }
    mask = trainer.decay_mask({"kernel": np.zeros((3, 3)), "bias": np.zeros(3)})
    assert mask == {"kernel": True, "bias": False}


@pytest.mark.parametrize(
    "module,arg",
    [
        (pretrain_config, None),
        (pretrain_config, "noise=0.1,seed=1,kind=asymmetric"),
        (pretrain_config, "smoke,model=resnet18"),
        (pretrain_cifar, "dataset=cifar100,noise=0.2"),
        (pretrain_cifar, "smoke"),
        *[(pretrain_imagenet, f"noise={r}") for r in pretrain_imagenet.RATIOS],
        (pretrain_imagenet, "smoke,fsdp"),
    ],
)
def test_config_variants_resolve(module, arg):
    config = module.get_config(arg)
    pretrain.validate(config)
    assert config.stage == "pretrain" and set(config.noise) >= {"kind", "ratio", "seed"}


def test_imagenet_config_is_the_standard_recipe():
    config = pretrain_imagenet.get_config("noise=0.1")
    assert (config.input.batch_size, config.total_epochs, config.warmup_epochs) == (1024, 90.0, 5.0)
    assert (config.optimizer.lr, config.optimizer.nesterov, config.label_smoothing) == (
        0.4,
        True,
        0.1,
    )
    assert config.model.to_dict() == {"name": "resnet50", "dtype": "bfloat16"}


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("label_smoothing", 1.5, "config.label_smoothing=1.5"),
        ("keep_checkpoints", 0, "config.keep_checkpoints=0"),
        ("total_steps", 0, "config.total_steps=0"),
    ],
)
def test_invalid_config_names_the_key(key, value, match):
    config = pretrain_config.get_config()
    config[key] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        pretrain.validate(config)
    with pytest.raises(config_lib.ConfigError, match=r"config\.optimizer\.name='rmsprop'"):
        config = pretrain_config.get_config()
        config.optimizer.name = "rmsprop"
        pretrain.validate(config)


def test_8_devices_match_1_device_with_batch_norm(tmp_path):
    # A ResNet with batch norm: its statistics must cover the global batch, not each device's slice.
    model = {
        "name": "resnet18",
        "width": 4,
        "stem": "small",
        "stage_sizes": (1,),
        "dtype": "float32",
    }
    results = []
    for devices in (8, 1):
        config = tiny_config(total_steps=3, num_devices=devices)
        config.model = model
        results.append(
            pretrain.train(
                config, str(tmp_path / f"d{devices}"), random_data(), random_data(16, seed=1), 3
            )
        )
    for name in ("params", "batch_stats"):
        a, b = (jax.device_get(getattr(r["state"], name)) for r in results)
        # Only the summation order differs between 8 and 1 devices.
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
    assert results[0]["summary"]["test_accuracy"] == results[1]["summary"]["test_accuracy"]


def test_fsdp_trains_like_the_replicated_run_on_8_devices(tmp_path):
    # widths 16 on 8x8 images: a 256x256 feature kernel (2**16 entries, the FSDP threshold) is sharded 8 ways,
    # and so is its SGD momentum; the small arrays stay replicated. (Not Adam: its first steps divide by
    # sqrt(v) + 1e-8, which turns float noise in near-zero gradients into differences of order lr.)
    results = {}
    for fsdp in (True, False):
        config = tiny_config(total_steps=4, num_devices=8, fsdp=fsdp)
        config.model.update(widths=(16,), feature_dim=256)
        results[fsdp] = pretrain.train(
            config, str(tmp_path / f"fsdp{fsdp}"), random_data(), random_data(16, seed=1), 3
        )
    sharded = results[True]["state"]
    kernel = sharded.params["Dense_0"]["kernel"]
    assert kernel.shape == (256, 256) and kernel.sharding.spec == P(None, "data")
    assert {shard.data.shape for shard in kernel.addressable_shards} == {(256, 32)}
    assert sharded.params["head"]["kernel"].sharding.is_fully_replicated
    moments = [
        leaf
        for leaf in jax.tree.leaves(sharded.opt_state)
        if getattr(leaf, "shape", ()) == (256, 256)
    ]
    assert len(moments) == 1 and all(m.sharding.spec == P(None, "data") for m in moments)
    a, b = (jax.device_get(results[f]["state"].params) for f in (True, False))
    # The same global computation; only XLA's partitioned reductions may order sums differently.
    diff = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))
    print(f"FSDP vs replicated: max parameter difference {diff:.1e}")
    assert diff < 1e-6
    one, other = results[True]["summary"], results[False]["summary"]
    assert one["test_accuracy"] == other["test_accuracy"]
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(one[key], other[key], rtol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A short pre-training on 1,024 real Fashion-MNIST images with 20% symmetric noise."""
    train = data.load("nml_fashion_mnist", "train[:1024]")
    test = data.load("nml_fashion_mnist", "test[:500]")
    rng = np.random.default_rng(0)
    is_noisy = rng.random(1024) < 0.2
    label = train["label"].copy()
    label[is_noisy] = (label[is_noisy] + rng.integers(1, 10, is_noisy.sum())) % 10
    train_data = {
        "image": train["image"],
        "label": label,
        "clean_label": train["label"],
        "is_noisy": is_noisy,
    }
    config = pretrain_config.get_config("noise=0.2")
    config.update(total_epochs=None, total_steps=48, log_every_steps=16, ckpt_every_steps=24)
    workdir = str(tmp_path_factory.mktemp("real"))
    return config, workdir, train_data, test, pretrain.train(config, workdir, train_data, test, 10)


def test_short_pretraining_learns_and_reports(real_run):
    _, workdir, _, _, result = real_run
    summary = result["summary"]
    assert summary["test_accuracy"] > 0.55, summary  # Chance is 0.1.
    assert summary["test_examples"] == 500
    # Clean examples are fitted far better than corrupted ones are memorised.
    assert summary["train_acc_clean"] > summary["train_acc_noisy"] + 0.3
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "train_loss" in r] == [16, 32, 48]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert sorted(result["state"].step.shape) == [] and int(result["state"].step) == 48


def test_finished_run_does_not_retrain(real_run):
    config, workdir, train_data, test, result = real_run
    again = pretrain.train(config, workdir, train_data, test, 10)
    assert again["trained_steps"] == 0 and again["summary"] == result["summary"]
    assert_trees_equal(params_of(again), params_of(result))


def test_restore_encoder_gives_features(real_run, tmp_path):
    config, workdir, _, test, result = real_run
    encoder = encoders.restore(workdir)
    assert (encoder.step, encoder.feature_dim, encoder.input_shape) == (48, 128, (28, 28, 1))
    feats = encoder.features(test["image"][:5])
    assert feats.shape == (5, 128) and feats.dtype == np.float32
    # The same features as the trained model's own forward pass with eval preprocessing.
    model = models.from_config(config.model, 10)
    x = (test["image"][:5].astype(np.float32) / 255.0 - 0.2860) / 0.3530
    variables = {"params": result["state"].params, "batch_stats": result["state"].batch_stats}
    np.testing.assert_allclose(feats, model.apply(variables, x)[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(encoders.ModelCardError, match="not a pre-training workdir"):
        encoders.restore(str(tmp_path))


def test_init_from_copies_params(real_run, tmp_path):
    config, workdir, train_data, test, result = real_run
    config = config.copy_and_resolve_references()
    config.update(init_from=workdir, total_steps=1)
    config.optimizer.update(lr=1e-9, momentum=0.0, weight_decay=0.0)
    started = pretrain.train(config, str(tmp_path), train_data, test, 10)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        params_of(started),
        params_of(result),
    )


def test_corrupted_checkpoint_falls_back_and_resume_is_exact(tmp_path, caplog):
    config, train_data, test = tiny_config(), random_data(), random_data(16, seed=1)
    straight = pretrain.train(config, str(tmp_path / "a"), train_data, test, 3)
    workdir = str(tmp_path / "b")
    pretrain.train(config, workdir, train_data, test, 3)
    os.remove(os.path.join(workdir, pretrain.SUMMARY_FILE))
    # Break the newest checkpoint (step 8): delete its array data files.
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "8")):
        for name in files:
            if "ocdbt" in root or name.startswith("manifest"):
                os.remove(os.path.join(root, name))
    resumed = pretrain.train(config, workdir, train_data, test, 3)
    assert resumed["resumed_from"] == 4 and resumed["trained_steps"] == 4
    assert "step 8" in caplog.text
    assert os.path.isdir(os.path.join(workdir, "corrupt_checkpoints", "8"))
    assert_trees_equal(params_of(resumed), params_of(straight))


def test_restore_raw_skips_a_corrupted_newest_checkpoint(tmp_path):
    config, train_data, test = tiny_config(), random_data(), random_data(16, seed=1)
    workdir = str(tmp_path)
    pretrain.train(config, workdir, train_data, test, 3)
    assert checkpoint.restore_raw(workdir)[0] == 8
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "8")):
        for name in files:
            if "ocdbt" in root or name.startswith("manifest"):
                os.remove(os.path.join(root, name))
    step, raw = checkpoint.restore_raw(workdir)
    assert step == 4 and "params" in raw
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    with pytest.raises(ValueError, match="can be restored"):
        checkpoint.restore_raw(workdir)


def test_non_finite_loss_names_the_step(tmp_path):
    config = tiny_config(total_steps=4, log_every_steps=4)
    config.optimizer.lr = 1e30
    with pytest.raises(FloatingPointError, match=r"at step [234]"):
        pretrain.train(config, str(tmp_path), random_data(), random_data(16, seed=1), 3)
    with pytest.raises(FloatingPointError, match="at step 7"):
        metrics.check_finite(7, "loss", float("nan"))


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from nml_jax import checkpoint, pretrain
    from tests import test_pretrain as t

    save = checkpoint.Checkpointer.save

    def save_then_die(self, step, state):
        if step == {kill_step}:
            self.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        save(self, step, state)

    checkpoint.Checkpointer.save = save_then_die
    pretrain.train(t.tiny_config(ckpt_every_steps=3, log_every_steps=3), {workdir!r}, t.random_data(),
                   t.random_data(16, seed=1), 3)
    """
)


def _metric_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_step, resumes_from",
    [
        (6, 3),  # Mid-run: steps 4-6 are lost and redone exactly.
        (8, 6),  # After the summary, before the final checkpoint: not "finished" until both exist.
    ],
)
def test_sigkill_then_resume_is_bit_exact(tmp_path, kill_step, resumes_from):
    config, train_data, test = (
        tiny_config(ckpt_every_steps=3, log_every_steps=3),
        random_data(),
        random_data(16, seed=1),
    )
    straight = pretrain.train(config, str(tmp_path / "a"), train_data, test, 3)
    workdir = str(tmp_path / "b")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=REPO, workdir=workdir, kill_step=kill_step))
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=REPO, capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(
        str(s) for s in (3, 6) if s < kill_step
    )
    resumed = pretrain.train(config, workdir, train_data, test, 3)
    assert resumed["resumed_from"] == resumes_from and resumed["trained_steps"] > 0
    assert_trees_equal(params_of(resumed), params_of(straight))
    assert_trees_equal(
        jax.device_get(resumed["state"].opt_state), jax.device_get(straight["state"].opt_state)
    )
    timing = ("wall_seconds", "steps_per_sec", "examples_per_sec", "eta_seconds")
    summary = {k: v for k, v in resumed["summary"].items() if k not in timing}
    assert summary == {k: v for k, v in straight["summary"].items() if k not in timing}
    assert "test_accuracy" in summary
    # The killed run's records of the redone steps are dropped, not duplicated.
    assert _metric_steps(workdir) == _metric_steps(str(tmp_path / "a"))
    assert "8" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_final_checkpoint_without_summary_is_evaluated_again(tmp_path):
    """A summary lost after the final checkpoint is rebuilt with the test metrics, without training."""
    config, train_data, test = tiny_config(), random_data(), random_data(16, seed=1)
    first = pretrain.train(config, str(tmp_path), train_data, test, 3)
    os.remove(tmp_path / pretrain.SUMMARY_FILE)
    again = pretrain.train(config, str(tmp_path), train_data, test, 3)
    assert again["trained_steps"] == 0
    assert again["summary"]["test_accuracy"] == first["summary"]["test_accuracy"]
    assert again["summary"]["test_loss"] == first["summary"]["test_loss"]


def test_optimizers_build_and_step():
    params = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    grads = jax.tree.map(np.ones_like, params)
    for name in trainer.OPTIMIZERS:
        config = pretrain_config.get_config()
        config.optimizer.update(name=name, clip_norm=1.0)
        tx = trainer.make_optimizer(config.optimizer, optax.constant_schedule(0.1))
        updates, _ = tx.update(grads, tx.init(params), params)
        assert all(np.all(np.isfinite(u)) and np.any(u != 0) for u in jax.tree.leaves(updates))
