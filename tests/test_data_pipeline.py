"""Tests of the preprocessing ops and the input pipelines (resume, per-process split, padded exact eval)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import nml_jax.data as data_lib
from nml_jax import parallel
from nml_jax.data import pipeline, preprocess


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_pipeline"))


@pytest.fixture(scope="session")
def mnist(data_dir):
    """MNIST-5k test with an extra per-example field, as the stages pass it."""
    data = dict(data_lib.load("nml_mnist5k", "test", data_dir=data_dir))
    data["index"] = np.arange(len(data["label"]))
    return data


def _take(iterator, count):
    return list(itertools.islice(iterator, count))


def test_steps_per_epoch():
    assert pipeline.steps_per_epoch(1000, 64) == 15
    with pytest.raises(ValueError, match="global_batch=0"):
        pipeline.steps_per_epoch(10, 0)


def test_pp_parser_errors_and_composition():
    with pytest.raises(
        ValueError, match=r"Unknown preprocessing op 'nope'.*registered ops: \[.*'flip_lr'"
    ):
        preprocess.parse("to_float|nope(3)")
    with pytest.raises(ValueError, match="must be Python literals"):
        preprocess.parse("resize(__import__('os'))")
    with pytest.raises(ValueError, match="Cannot parse"):
        preprocess.parse("resize(32")
    with pytest.raises(ValueError, match="Bad arguments"):
        preprocess.parse("resize(1, 2, 3, 4, 5)")
    op = preprocess.parse("to_float|resize(4)|normalize(0.5, 0.25)")
    out = op({"image": tf.fill([2, 2, 1], tf.constant(255, tf.uint8))})
    np.testing.assert_allclose(out["image"].numpy(), np.full((4, 4, 1), 2.0))  # (1 - 0.5) / 0.25
    assert preprocess.parse("")({"x": 1}) == {"x": 1}


def test_random_ops_are_stateless_and_need_a_seed():
    image = tf.reshape(tf.range(28 * 28 * 1, dtype=tf.float32), [28, 28, 1])
    op = preprocess.parse("random_crop(24, pad=2)|flip_lr")
    seed = tf.constant([3, 4], tf.int64)
    first = op({"image": image, preprocess.SEED_KEY: seed})["image"].numpy()
    np.testing.assert_array_equal(
        first, op({"image": image, preprocess.SEED_KEY: seed})["image"].numpy()
    )
    outs = {
        op({"image": image, preprocess.SEED_KEY: tf.constant([3, s], tf.int64)})["image"]
        .numpy()
        .tobytes()
        for s in range(8)
    }
    assert first.shape == (24, 24, 1) and len(outs) > 4
    with pytest.raises(ValueError, match="per-example seed"):
        op({"image": image})


def test_imagenet_ops_on_a_jpeg():
    pixels = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(pixels)
    seed = tf.constant([1, 2], tf.int64)
    train = preprocess.parse(
        "decode_jpeg_and_inception_crop(32)|flip_lr|value_range(0, 1)|normalize"
    )
    out = train({"image": jpeg, preprocess.SEED_KEY: seed})["image"]
    assert out.shape == (32, 32, 3) and out.dtype == tf.float32
    evaluate = preprocess.parse("decode|resize_small(40)|central_crop(32)|rgb_to_grey")
    out = evaluate({"image": jpeg})["image"]
    assert out.shape == (32, 32, 1) and out.dtype == tf.uint8


def test_resume_equals_uninterrupted_run(mnist):
    kwargs = dict(global_batch=64, seed=7, pp="to_float|random_crop(28, pad=2)|flip_lr")
    full = _take(
        pipeline.train_batches(mnist, **kwargs), 20
    )  # 15 steps per epoch: crosses an epoch.
    resumed = _take(pipeline.train_batches(mnist, start_step=13, **kwargs), 7)
    for a, b in zip(full[13:], resumed):
        for key in ("image", "label", "index"):
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(mnist["label"][full[0]["index"]], full[0]["label"])
    assert not np.array_equal(full[0]["image"], full[15]["image"])


def test_each_epoch_is_a_fresh_permutation_without_repeats(mnist):
    data = {k: v[:960] for k, v in mnist.items()}
    batches = _take(pipeline.train_batches(data, global_batch=64, seed=1), 30)
    first = np.concatenate([b["index"] for b in batches[:15]])
    second = np.concatenate([b["index"] for b in batches[15:]])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(960))
    assert not np.array_equal(first, second)
    other_seed = next(pipeline.train_batches(data, global_batch=64, seed=2))
    assert not np.array_equal(other_seed["index"], batches[0]["index"])


@pytest.mark.parametrize("count", [2, 3])
def test_processes_split_the_global_batch(mnist, count):
    whole = _take(
        pipeline.train_batches(mnist, global_batch=48, seed=3, process_index=0, process_count=1), 3
    )
    parts = [
        _take(
            pipeline.train_batches(
                mnist, global_batch=48, seed=3, process_index=p, process_count=count
            ),
            3,
        )
        for p in range(count)
    ]
    for step in range(3):
        assert parts[0][step]["index"].shape == (48 // count,)
        joined = np.concatenate([parts[p][step]["index"] for p in range(count)])
        np.testing.assert_array_equal(joined, whole[step]["index"])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_padded_eval_counts_every_example_once(mnist, count):
    seen = []
    per_process = []
    for p in range(count):
        batches = list(
            pipeline.eval_batches(
                mnist, global_batch=48, pp="to_float", process_index=p, process_count=count
            )
        )
        per_process.append(len(batches))
        seen += [b["index"][b["mask"] > 0] for b in batches]
    assert len(set(per_process)) == 1 and per_process[0] == 21  # ceil(1000 / 48)
    assert sorted(np.concatenate(seen).tolist()) == list(range(1000))


def test_padded_eval_is_exact_on_eight_devices(mnist):
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8

    @jax.jit
    def masked_sums(batch):
        mask = batch["mask"]
        return (
            jnp.sum(mask),
            jnp.sum(mask * batch["label"]),
            jnp.sum(mask * batch["image"].mean(axis=(1, 2, 3))),
        )

    totals = np.zeros(3)
    for batch in pipeline.eval_batches(mnist, global_batch=64, pp="to_float"):
        totals += np.asarray(jax.device_get(masked_sums(parallel.to_global(batch, mesh))))
    assert totals[0] == 1000
    assert totals[1] == mnist["label"].sum()
    np.testing.assert_allclose(
        totals[2], (mnist["image"] / 255.0).mean(axis=(1, 2, 3)).sum(), rtol=1e-5
    )


def test_bad_pipeline_arguments(mnist):
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        pipeline.train_batches(mnist, global_batch=64, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="larger than the 1000 examples"):
        pipeline.train_batches(mnist, global_batch=2048, seed=0)
    with pytest.raises(ValueError, match="same leading size"):
        pipeline.train_batches(
            {"image": mnist["image"], "label": mnist["label"][:5]}, global_batch=8, seed=0
        )


def test_stream_train_indices_labels_and_resume(data_dir, mnist):
    table = (mnist["label"] + 1) % 10  # A "noisy" label per example of the whole split.
    kwargs = dict(
        data_dir=data_dir,
        global_batch=32,
        seed=5,
        pp="to_float",
        label_table=table,
        shuffle_buffer=256,
    )
    parts = [
        _take(
            pipeline.stream_train(
                "nml_mnist5k", "test", process_index=p, process_count=2, **kwargs
            ),
            20,
        )
        for p in range(2)
    ]
    for p, batches in enumerate(parts):
        index = np.concatenate([b["index"] for b in batches[:15]])
        # Process p reads only its even_splits half, in which each epoch visits every example once.
        assert set(index[:480].tolist()) <= set(range(500 * p, 500 * (p + 1)))
        batch = batches[3]
        np.testing.assert_allclose(batch["image"], mnist["image"][batch["index"]] / 255.0)
        np.testing.assert_array_equal(batch["label"], table[batch["index"]])
    resumed = _take(
        pipeline.stream_train(
            "nml_mnist5k", "test", process_index=1, process_count=2, start_step=17, **kwargs
        ),
        3,
    )
    for a, b in zip(parts[1][17:], resumed):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_stream_eval_counts_every_example_once(data_dir, mnist):
    seen, lengths = [], []
    for p in range(3):
        batches = list(
            pipeline.stream_eval(
                "nml_mnist5k",
                "test",
                data_dir=data_dir,
                global_batch=63,
                pp="to_float",
                process_index=p,
                process_count=3,
            )
        )
        lengths.append(len(batches))
        for b in batches:
            real = b["mask"] > 0
            seen.append(b["index"][real])
            np.testing.assert_allclose(b["image"][real], mnist["image"][b["index"][real]] / 255.0)
            assert (b["index"][~real] == -1).all()
    assert lengths == [16, 16, 16]  # ceil(334 / 21)
    assert sorted(np.concatenate(seen).tolist()) == list(range(1000))
