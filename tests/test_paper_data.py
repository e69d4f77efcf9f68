"""The paper-scale data paths on stand-in TFDS datasets (real names, versions and feature specs; tiny JPEGs of
several sizes, written by tests/standin.py): configs, splits, preprocessing and caching."""

import glob
import os
import sys
import types

import ml_collections
import numpy as np
import pytest
import standin  # tests/ is on sys.path (pytest's rootdir-relative import mode).
import tensorflow as tf
from absl import flags
from ml_collections import config_flags

import nml_jax.data as data_lib
from nml_jax import config_lib, features, tasks
from nml_jax.data import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    return standin.write_all(str(tmp_path_factory.mktemp("standin_tfds")))


def test_standins_read_like_the_real_datasets(standin_dir):
    """The stand-ins carry the catalog's version and features, and JPEGs of both sizes."""
    builder = data_lib.builder("imagenet2012", standin_dir)
    assert str(builder.version) == "5.1.0" and builder.info.features["label"].num_classes == 1000
    assert (
        builder.info.splits["train"].num_examples == standin.PAPER_SPLITS["imagenet2012"]["train"]
    )
    shapes = {
        tuple(ex["image"].shape) for ex in builder.as_dataset(split="train").as_numpy_iterator()
    }
    assert shapes == {(60, 80, 3), (300, 200, 3)}
    assert (
        data_lib.builder("domainnet/sketch", standin_dir).info.features["label"].num_classes == 345
    )


def _leaves(config, prefix=""):
    for key in config:
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", config.get_type(key)


@pytest.mark.parametrize(
    "spec",
    sorted(
        os.path.relpath(p, ROOT) + variant
        for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
        for variant in ("", ":smoke")
    ),
)
def test_every_config_key_has_a_command_line_type(spec):
    """No None-typed leaf: `--config.KEY=VALUE` works for every key of every config (config_flags has a
    parser for these types only)."""
    try:
        config = config_lib.load_config(os.path.join(ROOT, spec))
    except config_lib.ConfigError:
        pytest.skip(f"{spec} has no such variant")
    parseable = (float, bool, tuple, int, str, object)
    untyped = [key for key, kind in _leaves(config) if kind not in parseable]
    assert not untyped, f"{spec}: keys without a command-line type: {untyped}"


@pytest.mark.parametrize(
    "config, flag, key, expected",
    [
        ("pretrain.py", "--config.data_dir=/data/tfds", "data_dir", "/data/tfds"),
        ("pretrain_cifar.py", "--config.data_dir=/data/tfds", "data_dir", "/data/tfds"),
        ("pretrain_imagenet.py", "--config.total_steps=7", "total_steps", 7),
        ("clip_yfcc15m.py", "--config.total_steps=7", "total_steps", 7),
        ("clip_yfcc15m.py", "--config.zero_shot.data_dir=/d", "zero_shot.data_dir", "/d"),
        ("pretrain.py", "--config.noise.pairs={0: 6, 6: 0}", "noise.pairs", {0: 6, 6: 0}),
        ("noise.py", "--config.noise.matrix=((0.9, 0.1), (0.2, 0.8))", "noise.matrix", None),
    ],
)
def test_command_line_overrides(monkeypatch, config, flag, key, expected):
    argv = ["main", f"--config={os.path.join(ROOT, 'configs', config)}", flag]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv.
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(argv)
    got = values.config
    for part in key.split("."):
        got = got[part]
    if expected is None:
        expected = ((0.9, 0.1), (0.2, 0.8))
    assert got == expected


def test_central_crop_keeps_a_static_shape():
    """resize_small gives a dynamic shape; the crop must restore a static one for batching and padded eval."""
    op = preprocess.parse("decode|resize_small(40)|central_crop(32)|value_range(0, 1)|normalize")
    spec = (
        tf.data.Dataset.from_tensors({"image": tf.io.encode_jpeg(tf.zeros([60, 80, 3], tf.uint8))})
        .map(op)
        .element_spec
    )
    assert spec["image"].shape.as_list() == [32, 32, 3]
    with pytest.raises(tf.errors.InvalidArgumentError):
        preprocess.parse("central_crop(32)")({"image": tf.zeros([20, 40, 3])})


def test_limit_split_cuts_unions_and_slices(tmp_path):
    data_dir = str(tmp_path)
    standin.write("oxford_flowers102", data_dir, {"train": 5, "validation": 3, "test": 2})
    name = "oxford_flowers102"
    assert data_lib.limit_split(name, "train+validation", 7, data_dir) == "train[:5]+validation[:2]"
    assert data_lib.limit_split(name, "train+validation", 3, data_dir) == "train[:3]"
    assert data_lib.limit_split(name, "train+validation", 8, data_dir) == "train+validation"
    assert data_lib.limit_split(name, "train[2:]", 2, data_dir) == "train[2:4]"
    assert data_lib.limit_split(name, "train", None, data_dir) == "train"
    assert data_lib.num_examples(name, "train[:5]+validation[:2]", data_dir) == 7


def test_train_limit_cuts_the_paper_suites(standin_dir):
    """`train_limit` applies to every suite's training splits, never to its test splits."""
    config = ml_collections.ConfigDict(
        {"suite": "domainnet_real", "train_limit": 4, "data_dir": standin_dir}
    )
    (task,) = features.suite(config)
    assert task.train.split == "train[:4]"
    assert {d.split for d in task.tests} == {"test"}
    config.train_limit = 100
    assert features.suite(config)[0].train.split == "train"
    assert tasks.limit_train(tasks.embedded_suite(), None) == tasks.embedded_suite()


def test_only_embedded_sets_are_cached(standin_dir):
    """A paper set's split is read again per call (never kept alive); embedded sets are shared."""
    first = data_lib.load("cifar10", "train", data_dir=standin_dir)
    again = data_lib.load("cifar10", "train", data_dir=standin_dir)
    assert first["image"] is not again["image"]
    np.testing.assert_array_equal(first["image"], again["image"])
    fashion = data_lib.load("nml_uci_digits", "test")
    assert data_lib.load("nml_uci_digits", "test")["image"] is fashion["image"]


# ---------------------------------------------------------------------------------------------------------------
# Streamed features.


def _encoder(tmp_path, input_shape=(16, 16, 3), pp_eval="to_float"):
    """A small frozen CNN encoder (random weights) with the given input shape and eval pp."""
    import jax
    import jax.numpy as jnp

    from nml_jax import encoders
    from nml_jax.models import cnn

    model = cnn.SmallCNN(num_classes=4, widths=(4, 8), feature_dim=8)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *input_shape)))
    card = {
        "kind": "classifier",
        "input_shape": list(input_shape),
        "config": {"input": {"pp_eval": pp_eval}},
    }
    apply_fn = lambda v, x: model.apply(v, x, train=False)[1]
    return encoders.ImageEncoder(card, apply_fn, variables, 8, 0, str(tmp_path))


def _stream_inputs(encoder, name, split, data_dir):
    """The encoder inputs of every example, preprocessed one by one, in row order."""
    op = preprocess.parse(features.stream_pp(encoder))
    ds = data_lib.builder(name, data_dir).as_dataset(
        split=split, shuffle_files=False, read_config=data_lib.READ_CONFIG
    )
    return np.stack(
        [op({"image": ex["image"], "label": ex["label"], "index": 0})["image"].numpy() for ex in ds]
    )


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return _encoder(tmp_path_factory.mktemp("encoder"))


@pytest.mark.parametrize("channels", [3, 1])
def test_constant_colour_stays_constant_through_the_stream(tmp_path, encoder, channels):
    """No zero padding reaches the encoder: a constant-colour JPEG (60x80 and 300x200) arrives as one constant
    input (RGB, or its ITU-R 601 luma for a grey encoder), and every example gets the same features."""
    colour = np.array([200, 40, 90])
    data_dir = str(tmp_path / "tfds")
    standin.write("domainnet/clipart", data_dir, {"test": 5}, colour=colour)
    grey = ml_collections.ConfigDict({"input": {"pp_eval": "to_float"}})
    shape_of = (
        encoder if channels == 3 else types.SimpleNamespace(config=grey, input_shape=(16, 16, 1))
    )
    inputs = _stream_inputs(shape_of, "domainnet/clipart", "test", data_dir)
    expected = colour / 255.0 if channels == 3 else [colour @ [0.299, 0.587, 0.114] / 255.0]
    assert inputs.shape == (5, 16, 16, channels)
    np.testing.assert_allclose(inputs, np.broadcast_to(expected, inputs.shape), atol=3 / 255)
    assert np.ptp(inputs, axis=(1, 2)).max() <= 1 / 255 + 1e-6
    if channels == 3:
        feats, _ = features.stream_features(
            encoder, "domainnet/clipart", "test", data_dir=data_dir, batch_size=8
        )
        assert np.ptp(feats[0], axis=0).max() < 1e-3  # Every row the same (up to JPEG rounding).


def test_stream_features_match_per_example_encoding_in_row_order(standin_dir, encoder):
    """Mixed-size JPEGs in padded, mesh-sharded batches give each row exactly its own example's features and
    label; augmented views equal `augmented_view` on the same inputs."""
    inputs = _stream_inputs(encoder, "imagenet2012", "train", standin_dir)
    spec = {"scale": [0.8, 1.0], "flip": True, "seed": 3, "recipe": "supervised"}
    feats, labels = features.stream_features(
        encoder,
        "imagenet2012",
        "train",
        views=(0, 2),
        view_spec=spec,
        data_dir=standin_dir,
        batch_size=3,  # Rounded up to the 8 devices: one batch holds all 8 rows.
    )
    np.testing.assert_array_equal(
        labels, data_lib.load_labels("imagenet2012", "train", data_dir=standin_dir)
    )
    reference = encoder.embed(inputs, batch_size=8)
    np.testing.assert_allclose(feats[0], reference, rtol=1e-5, atol=1e-6)
    view = features.augmented_view(encoder, inputs, 2, spec, chunk=4)
    np.testing.assert_allclose(feats[2], view, rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats[2], feats[0])
    few, _ = features.stream_features(
        encoder, "imagenet2012", "validation", data_dir=standin_dir, batch_size=8
    )
    assert few[0].shape == (4, 8)  # 4 rows in one 8-row batch: 4 padded rows masked out.
    np.testing.assert_allclose(
        few[0],
        encoder.embed(_stream_inputs(encoder, "imagenet2012", "validation", standin_dir), 8),
        rtol=1e-5,
        atol=1e-6,
    )


# ---------------------------------------------------------------------------------------------------------------
# The paper's protocols.


def test_paper_id_is_the_papers_list_with_documented_splits():
    assert "fgvc_aircraft" in tasks.PAPER_ID and "sun397" not in tasks.PAPER_ID
    assert len(tasks.PAPER_ID) == 13
    for name in tasks.PAPER_ID:
        data_lib.check_name(name)  # Every set is a registered TFDS builder (fgvc_aircraft is ours).
    assert tasks.PAPER_ID["patch_camelyon"] == ("train+validation", "test")
    assert tasks.PAPER_ID["food101"] == ("train", "validation")


def test_shipped_class_lists(standin_dir):
    from nml_jax.data import classes

    names = classes.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet paper"
    templates = classes.clip_imagenet_templates()
    assert len(templates) == len(set(templates)) == 80
    assert all(t.count("{}") == 1 for t in templates)
    wnids = data_lib.class_names("imagenet2012", standin_dir)  # TFDS's labels: WordNet ids.
    for dataset in ("imagenet_a", "imagenet_r"):
        covered = classes.subset(dataset, wnids)
        assert len(covered) == 200 and len(set(covered)) == 200
    assert 6 in classes.subset("imagenet_a", wnids)  # stingray
    assert 1 in classes.subset("imagenet_r", wnids) and 0 not in classes.subset("imagenet_r", wnids)
    assert classes.subset("imagenet_v2/matched-frequency", wnids) is None
    with pytest.raises(ValueError, match="200-class subset"):
        classes.subset("imagenet_a", [str(i) for i in range(1000)])
    variants = classes.read_lines("fgvc_aircraft_variants.txt")
    assert len(variants) == len(set(variants)) == 100


def test_masked_accuracy_argmax_over_the_covered_classes(monkeypatch):
    from nml_jax import tuning

    logits = np.array([[5.0, 1.0, 2.0, 0.0], [0.0, 3.0, 9.0, 4.0]])
    monkeypatch.setattr(tuning, "predict", lambda head, feats: logits)
    labels = np.array([2, 3])
    assert tuning.accuracy(None, None, labels) == 0.0
    assert (
        tuning.accuracy(None, None, labels, classes=[2, 3]) == 0.5
    )  # Row 0 -> 2 (right), row 1 -> 2.
    assert tuning.accuracy(None, None, labels, classes=[1, 3]) == 0.5  # Row 1 -> 3 (right).


def test_imagenet_zero_shot_prompts_use_names_and_clip_templates(standin_dir):
    from nml_jax import clip_pretrain

    prompts = clip_pretrain.class_prompts("imagenet2012", standin_dir)
    assert len(prompts) == 1000 and len(prompts[0]) == 80
    assert prompts[0][0] == "a bad photo of a tench." and "n01440764" not in " ".join(prompts[0])
    assert clip_pretrain.class_prompts("cifar10", standin_dir)[0][0] == "a photo of a airplane."


def test_fgvc_aircraft_builds_from_the_archive_layout(tmp_path):
    """The builder reads the official file layout (here three tiny JPEGs) through TFDS's own prepare."""
    import tensorflow_datasets as tfds
    from PIL import Image

    from nml_jax.data import classes

    variants = classes.read_lines("fgvc_aircraft_variants.txt")
    root = tmp_path / "tfds" / "downloads" / "manual" / "fgvc-aircraft-2013b" / "data"
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    rows = {"train": [("0034309", "A380"), ("0034958", "747-400")], "val": [], "test": []}
    rows["val"] = [("1025794", "DC-3")]
    rows["test"] = [("0062765", "Tu-154")]
    for split, items in rows.items():
        (root / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in items))
        for image_id, _ in items:
            Image.new("RGB", (80, 60), (10, 20, 30)).save(root / "images" / f"{image_id}.jpg")
    data_dir = str(tmp_path / "tfds")
    tfds.builder("fgvc_aircraft", data_dir=data_dir).download_and_prepare()
    labels = data_lib.load_labels("fgvc_aircraft", "train", data_dir=data_dir)
    assert sorted(labels) == sorted([variants.index("A380"), variants.index("747-400")])
    assert data_lib.num_examples("fgvc_aircraft", "test", data_dir) == 1
    (root / "variants.txt").write_text("\n".join(reversed(variants)) + "\n")
    with pytest.raises(ValueError, match="first differ at line 1"):
        tfds.builder("fgvc_aircraft", data_dir=str(tmp_path / "other")).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(root.parent.parent))
        )


def test_noise_labels_are_made_once_and_read_by_every_other_host(
    standin_dir, tmp_path, monkeypatch
):
    """With two processes, process 0 reads the labels and writes noise.npz; process 1 reads no label, waits at
    the barrier and reads the file from the shared workdir."""
    import jax
    from jax.experimental import multihost_utils

    from nml_jax import noise

    config = config_lib.load_config(os.path.join(ROOT, "configs", "pretrain_imagenet.py:noise=0.2"))
    config.data_dir = standin_dir
    barriers = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    made = noise.load_or_make(config, str(tmp_path))
    monkeypatch.setattr(jax, "process_index", lambda: 1)

    def no_labels(*args, **kwargs):
        raise AssertionError("process 1 read the labels")

    monkeypatch.setattr(data_lib, "load_labels", no_labels)
    read = noise.load_or_make(config, str(tmp_path))
    assert barriers == ["nml_jax_noise", "nml_jax_noise"]
    np.testing.assert_array_equal(read["noisy_labels"], made["noisy_labels"])
    assert int(made["is_noisy"].sum()) == round(0.2 * standin.PAPER_SPLITS["imagenet2012"]["train"])


def test_streamed_resume_skips_the_epochs_before_it(monkeypatch):
    """A run resumed in epoch 3 reads none of epochs 0-2: only its block (here the part's one shard piece, as
    the split has one file) and at most the next one for prefetching, not the 2,500 records before it."""
    import itertools

    from nml_jax.data import pipeline

    read = []
    records = tf.data.TFRecordDataset

    def counted(*args, **kwargs):
        count = lambda r: tf.py_function(lambda: read.append(1) or 0, [], tf.int32)
        return records(*args, **kwargs).map(lambda r: (count(r), r)[1])

    kwargs = dict(global_batch=100, seed=3, shuffle_buffer=64, process_index=0, process_count=1)
    full = list(itertools.islice(pipeline.stream_train("nml_uci_digits", "test", **kwargs), 26))
    monkeypatch.setattr(tf.data, "TFRecordDataset", counted)
    resumed = next(pipeline.stream_train("nml_uci_digits", "test", start_step=25, **kwargs))
    np.testing.assert_array_equal(resumed["index"], full[25]["index"])
    np.testing.assert_array_equal(resumed["image"], full[25]["image"])
    size = data_lib.num_examples("nml_uci_digits", "test")
    assert size <= len(read) <= 2 * size < 25 * 100


def test_online_views_are_refused_for_the_paper_suites():
    """Online views keep the training inputs in memory: only the embedded suite may ask for them."""
    from nml_jax import defaults

    config = defaults.downstream(("lp", "nmtune"), "paper_id")
    config.views.mode = "online"
    with pytest.raises(config_lib.ConfigError, match=r"views\.mode='online'.*paper_id"):
        features.validate(config)
    config.suite = "embedded"
    features.validate(config)
