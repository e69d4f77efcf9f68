"""CLIP pre-training: loss, global-batch gathering, caption swap, tokenizer, TFRecord reader, training, resume."""

import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nml_jax import (
    clip_pretrain,
    config_lib,
    data,
    defaults,
    encoders,
    losses,
    noise,
    parallel,
    tokenizer,
)
from nml_jax.data import captions, shards
from nml_jax.models import clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import clip_pretrain as clip_config  # noqa: E402
from configs import clip_yfcc15m  # noqa: E402


def tiny_config(**overrides):
    """The smoke config on the first 256 Fashion-MNIST pairs, zero-shot on 500 test images."""
    config = clip_config.get_config("smoke")
    config.train_split = "train[:256]"
    config.zero_shot.split = "test[:500]"
    config.input.eval_batch_size = 256
    for key, value in overrides.items():
        config[key] = value
    return config


def params_of(result):
    return jax.tree.map(np.asarray, jax.device_get(result["state"].params))


def test_loss_matches_hand_computed_3x3():
    image = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    text = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    # s * I T^T with s = 2: rows are images, columns texts.
    logits = 2.0 * np.array([[1.0, 0.6, 0.0], [0.0, 0.8, 1.0], [0.6, 1.0, 0.8]])
    rows = [np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(3)]
    cols = [np.log(np.exp(logits[:, i]).sum()) - logits[i, i] for i in range(3)]
    expected = 0.5 * (np.mean(rows) + np.mean(cols))
    got = losses.info_nce(image, text, jnp.float32(2.0))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Perfectly aligned, well separated pairs at a large scale cost nearly nothing.
    eye = np.eye(3, dtype=np.float32)
    assert float(losses.info_nce(eye, eye, jnp.float32(100.0))) < 1e-6
    counts = clip_pretrain.retrieval_counts(image, text, np.array([False, True, False]))
    # Image 0 -> text 0 (hit, clean), image 1 -> text 2 (miss, noisy), image 2 -> text 1 (miss, clean).
    assert {k: float(v) for k, v in counts.items()} == {
        "hit_clean": 1.0,
        "hit_noisy": 0.0,
        "n_clean": 2.0,
        "n_noisy": 1.0,
    }


def test_loss_over_8_devices_uses_the_global_batch():
    rng = np.random.default_rng(0)
    image = losses.l2_normalize(rng.normal(size=(16, 8)).astype(np.float32))
    text = losses.l2_normalize(rng.normal(size=(16, 8)).astype(np.float32))
    scale = jnp.float32(10.0)
    single = float(losses.info_nce(image, text, scale))
    mesh = parallel.make_mesh(8)
    sharded = NamedSharding(mesh, P(parallel.DATA_AXIS))
    fn = jax.jit(losses.info_nce, in_shardings=(sharded, sharded, parallel.replicated(mesh)))
    args = (jax.device_put(image, sharded), jax.device_put(text, sharded), scale)
    assert len(args[0].sharding.device_set) == 8
    np.testing.assert_allclose(float(fn(*args)), single, rtol=1e-6)
    # A per-device loss (negatives only from the local 2 pairs) would be different.
    local = np.mean(
        [float(losses.info_nce(image[i : i + 2], text[i : i + 2], scale)) for i in range(0, 16, 2)]
    )
    assert abs(local - single) > 0.1
    hlo = fn.lower(*args).compile().as_text()
    assert "all-gather" in hlo or "all-reduce" in hlo


@pytest.mark.slow
def test_model_sizes_and_towers():
    tokens = np.array([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]], np.int32)
    for image in (
        {"name": "cnn", "widths": (4,), "feature_dim": 8},
        {"name": "resnet18", "width": 4, "stem": "small", "num_heads": 2},
        {"name": "vit", "patch_size": 4, "width": 8, "depth": 1, "num_heads": 2, "mlp_dim": 16},
    ):
        cfg = {
            "embed_dim": 6,
            "image": image,
            "text": dict(vocab_size=10, context_length=5, width=8, depth=1, num_heads=2),
        }
        model = clip.build(cfg)
        variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)), tokens)
        img, txt, scale = model.apply(variables, jnp.ones((2, 8, 8, 1)), tokens)
        assert img.shape == txt.shape == (2, 6), image["name"]
        np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(float(scale), 1 / 0.07, rtol=1e-5)
    # Causal mask + EOT readout: tokens after the EOT (padding) cannot change a text's embedding.
    changed = tokens.copy()
    changed[1, 4] = 9
    a = model.apply(variables, tokens, method=clip.CLIP.encode_text)
    b = model.apply(variables, np.where(changed == 9, 0, changed), method=clip.CLIP.encode_text)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # The temperature is clipped at 100.
    big = jax.tree.map(lambda x: x, variables)
    big["params"]["logit_scale"] = jnp.float32(10.0)
    assert float(model.apply(big, jnp.ones((2, 8, 8, 1)), tokens)[2]) == pytest.approx(100.0)
    # Published sizes: CLIP RN50 102.0M and ViT-B/16 149.6M parameters.
    for size, count in (("rn50", 102.0e6), ("vit_b16", 149.6e6)):
        model = clip.build(defaults.clip_model(size))
        shapes = jax.eval_shape(
            lambda m=model: m.init(
                jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), jnp.ones((1, 77), jnp.int32)
            )
        )
        total = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
        assert abs(total - count) / count < 0.01, (size, total)


def test_tokenizer_round_trip_and_save_load(tmp_path):
    texts = captions.compose_captions(np.arange(200) % 10, captions.FASHION_MNIST_DESCRIPTIONS, 0)
    tok = tokenizer.train(texts, vocab_size=400)
    assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 1, 2)
    assert tok.vocab_size <= 400
    rows = tok.encode(["A Photo of a Sneaker.", "x" * 50], context_length=12)
    assert rows.dtype == np.int32 and rows.shape == (2, 12)
    assert rows[0, 0] == tok.sot_id and tok.eot_id in rows[0]
    assert tok.decode(rows[0]) == "a photo of a sneaker."  # Lower-cased, specials dropped.
    assert rows[1, -1] == tok.eot_id and tok.pad_id not in rows[1]  # Cut, EOT kept last.
    # Known words are merged into fewer tokens than bytes.
    assert np.sum(rows[0] > 2) < len("a photo of a sneaker.")
    path = str(tmp_path / tokenizer.FILE_NAME)
    tok.save(path)
    np.testing.assert_array_equal(
        tokenizer.Tokenizer.load(path).encode(texts, 24), tok.encode(texts, 24)
    )
    again = tokenizer.load_or_train(str(tmp_path), ["other words entirely"], vocab_size=300)
    np.testing.assert_array_equal(again.encode(texts, 24), tok.encode(texts, 24))
    with pytest.raises(ValueError, match="vocab_size=100"):
        tokenizer.train(texts, vocab_size=100)


def test_captions_are_deterministic_and_swap_is_exact(tmp_path):
    labels = np.array([0, 7, 9, 3])
    first = captions.compose_captions(labels, captions.FASHION_MNIST_DESCRIPTIONS, seed=3)
    assert first == captions.compose_captions(labels, captions.FASHION_MNIST_DESCRIPTIONS, seed=3)
    for text, label in zip(first, labels):
        synonyms, _ = captions.FASHION_MNIST_DESCRIPTIONS[label]
        assert any(s in text for s in synonyms), text
    config = tiny_config(train_split="train[:200]")
    config.noise.ratio = 0.3
    workdir = str(tmp_path)
    pairs, tok = clip_pretrain.build_pairs(config, workdir)
    record = noise.load(os.path.join(workdir, noise.NOISE_FILE))
    index = record["caption_index"]
    assert int(pairs["is_noisy"].sum()) == 60 and int((index != np.arange(200)).sum()) == 60
    np.testing.assert_array_equal(np.sort(index), np.arange(200))  # Every caption used once.
    loaded = data.load(config.dataset, config.train_split)
    clean = tok.encode(
        captions.compose_captions(loaded["label"], captions.FASHION_MNIST_DESCRIPTIONS, 0),
        config.model.text.context_length,
    )
    np.testing.assert_array_equal(pairs["tokens"], clean[index])
    np.testing.assert_array_equal(pairs["is_noisy"], record["is_noisy"])
    assert os.path.exists(os.path.join(workdir, tokenizer.FILE_NAME))


def test_tfrecord_shards_round_trip(tmp_path):
    """Images arrive with their captions, tokenized per shard: a clean pair carries its own caption, a swapped
    pair the caption of another record of its shard; the processes split the shards; a resume is exact."""
    images = data.load("nml_fashion_mnist", "test[:40]")["image"]
    texts = [f"caption number {i}" for i in range(40)]
    paths = captions.write_shards(str(tmp_path / "pairs"), images, texts, num_shards=4)
    files = captions.list_shards(str(tmp_path / "pairs-*.tfrecord"))
    assert files == paths
    workdir = str(tmp_path / "work")
    counts = captions.load_or_count(workdir, files)
    assert counts == [10, 10, 10, 10] and captions.read_counts(workdir, files) == counts
    assert list(captions.first_captions(files, 13)) == texts[:13]
    record = noise.make_caption_noise(40, defaults.noise_block("caption_swap", 0.3, 2), counts)
    tok = tokenizer.train(texts, vocab_size=300)
    clean = tok.encode(texts, 8)
    common = dict(
        caption_index=record["caption_index"],
        is_noisy=record["is_noisy"],
        tokenize=lambda t: tok.encode(t, 8),
        global_batch=8,
        seed=0,
        pp="decode(1)",
        shuffle_buffer=4,
    )
    seen = {}
    for process in (0, 1):
        batches = captions.stream_pairs(
            files, counts, process_index=process, process_count=2, **common
        )
        for _ in range(5):  # 20 examples per process and epoch, 4 per batch.
            batch = next(batches)
            assert batch["image"].shape == (4, 28, 28, 1)
            for image, i, tokens, swapped in zip(
                batch["image"], batch["index"], batch["tokens"], batch["is_noisy"]
            ):
                seen.setdefault(int(i), process)
                # JPEG is lossy; the decoded image stays close to the original.
                assert np.abs(image.astype(float) - images[i].astype(float)).mean() < 8
                (source,) = np.flatnonzero((clean == tokens).all(axis=1))
                assert source == record["caption_index"][i] and swapped == (source != i)
                assert source // 10 == i // 10  # The caption comes from the same shard.
    # Process 0 reads shards 0 and 2, process 1 shards 1 and 3; together every example once.
    assert sorted(seen) == list(range(40))
    assert all(seen[i] == (i // 10) % 2 for i in seen)
    assert int(record["is_noisy"].sum()) == 12  # round(0.3 * 40).
    # Resume: the batches from step 13 (epoch 2) equal those of an uninterrupted stream.
    straight = captions.stream_pairs(files, counts, process_index=0, process_count=1, **common)
    resumed = captions.stream_pairs(
        files, counts, process_index=0, process_count=1, start_step=13, **common
    )
    for _ in range(13):
        next(straight)
    for _ in range(3):
        a, b = next(straight), next(resumed)
        for key in ("index", "image", "tokens", "is_noisy"):
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(FileNotFoundError, match="jpg"):
        captions.list_shards(str(tmp_path / "missing-*.tfrecord"))
    with pytest.raises(ValueError, match="caption_index has 39 entries"):
        captions.stream_pairs(files, counts, **{**common, "caption_index": np.arange(39)})


def test_streamed_pairs_resume_skips_earlier_shards(tmp_path):
    """A resumed CLIP stream never opens the shards of the blocks before its resume point: removing them
    leaves its batches unchanged."""
    images = data.load("nml_fashion_mnist", "test[:48]")["image"]
    texts = [f"caption {i}" for i in range(48)]
    files = captions.write_shards(str(tmp_path / "pairs"), images, texts, num_shards=8)
    counts = captions.count_records(files)
    record = noise.make_caption_noise(48, defaults.noise_block("caption_swap", 0.5, 0), counts)
    tok = tokenizer.train(texts, vocab_size=300)
    common = dict(
        caption_index=record["caption_index"],
        is_noisy=record["is_noisy"],
        tokenize=lambda t: tok.encode(t, 8),
        global_batch=6,
        seed=1,
        pp="decode(1)",
        shuffle_buffer=6,  # One shard per block.
        process_index=0,
        process_count=1,
    )
    straight = [
        next(b) for b in [captions.stream_pairs(files, counts, **common)] for _ in range(14)
    ]
    # Step 13 = epoch 1, its 6th block (one shard of 6 records = one batch each).
    epoch, block, offset = shards.locate(np.array(counts), 1, 1, 0, 13 * 6)
    assert (epoch, block, offset) == (1, 5, 0)
    order = shards.epoch_blocks(8, 1, 1, 0, epoch=1)
    for ids in order[:block]:
        os.remove(files[int(ids[0])])
    resumed = next(captions.stream_pairs(files, counts, start_step=13, **common))
    for key in ("index", "image", "tokens"):
        np.testing.assert_array_equal(resumed[key], straight[13][key])


def test_shard_counts_noise_and_tokenizer_are_made_once(tmp_path, monkeypatch):
    """With two processes, process 0 counts the records, makes the within-shard swaps and trains the BPE on the
    first `tokenizer_texts` captions; process 1 counts nothing, reads no caption, waits at the barriers and
    reads the three files from the shared workdir."""
    from jax.experimental import multihost_utils

    images = data.load("nml_fashion_mnist", "test[:30]")["image"]
    texts = [f"a photo number {i}" for i in range(30)]
    captions.write_shards(str(tmp_path / "pairs"), images, texts, num_shards=3)
    config = clip_yfcc15m.get_config("noise=0.2")
    config.shards = str(tmp_path / "pairs-*.tfrecord")
    config.tokenizer_texts = 12
    workdir = str(tmp_path / "work")
    barriers, trained_on = [], []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    train = tokenizer.train
    monkeypatch.setattr(
        tokenizer, "train", lambda t, v: train(trained_on.extend(t) or trained_on, v)
    )
    made, tok = clip_pretrain.build_pairs(config, workdir)
    assert trained_on == texts[:12]
    assert made["counts"] == [10, 10, 10] and int(made["is_noisy"].sum()) == 6

    def no_reading(*args, **kwargs):
        raise AssertionError("process 1 read the shards")

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(captions, "count_records", no_reading)
    monkeypatch.setattr(captions, "first_captions", no_reading)
    read, tok_1 = clip_pretrain.build_pairs(config, workdir)
    assert barriers == ["nml_jax_clip_shards", "nml_jax_noise", "nml_jax_clip_tokenizer"] * 2
    assert read["counts"] == made["counts"] and read["files"] == made["files"]
    np.testing.assert_array_equal(read["caption_index"], made["caption_index"])
    np.testing.assert_array_equal(tok_1.encode(texts, 8), tok.encode(texts, 8))
    # Another shard layout under the same workdir is refused, not silently mismatched.
    captions.write_shards(str(tmp_path / "pairs"), images[:20], texts[:20], num_shards=3)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(captions, "count_records", lambda files: [7, 7, 6])
    with pytest.raises(Exception, match="other numbers of records"):
        clip_pretrain.build_pairs(config, workdir)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    config = tiny_config(train_split="train[:2048]", total_steps=96, log_every_steps=16)
    config.model.text.context_length = 20
    config.optimizer.lr = 3e-3
    config.zero_shot.split = "test[:1000]"
    workdir = str(tmp_path_factory.mktemp("clip_short"))
    return config, workdir, clip_pretrain.run(config, workdir)


@pytest.mark.slow
def test_short_run_learns_and_zero_shot_beats_chance(short_run):
    config, workdir, result = short_run
    history = [r for r in result["history"] if "train_loss" in r]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.5, history
    assert result["summary"]["zero_shot_accuracy"] > 0.3, result["summary"]  # Chance is 0.1.
    for name in ("model.json", "tokenizer.json", "noise.npz", "metrics.jsonl"):
        assert os.path.exists(os.path.join(workdir, name)), name
    again = clip_pretrain.run(config, workdir)
    assert again["trained_steps"] == 0 and again["summary"] == result["summary"]


@pytest.mark.slow
def test_restore_encoder_gives_image_embeddings(short_run):
    config, workdir, result = short_run
    assert encoders.read_card(workdir)["kind"] == "clip"
    encoder = encoders.restore(workdir)  # Dispatches on model.json's kind.
    assert isinstance(encoder, encoders.ImageEncoder)
    assert (encoder.step, encoder.feature_dim, encoder.input_shape) == (96, 32, (28, 28, 1))
    assert encoder.config.noise.ratio == 0.0 and encoder.config.seed == 0
    images = data.load("nml_fashion_mnist", "test[:8]")["image"]
    feats = encoder.features(images)
    model = clip.build(config.model)
    variables = {"params": result["state"].params}
    pp = (images.astype(np.float32) / 255.0 - 0.2860) / 0.3530
    direct = model.apply(variables, pp, method=clip.CLIP.encode_image)
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resume_after_a_stop_ends_where_a_straight_run_ends(tmp_path):
    config = tiny_config()
    straight = clip_pretrain.run(config, str(tmp_path / "a"))
    workdir = str(tmp_path / "b")
    clip_pretrain.run(config, workdir)
    # Stopped after the step-4 checkpoint: the later checkpoint and the summary never got written.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
    os.remove(os.path.join(workdir, clip_pretrain.SUMMARY_FILE))
    resumed = clip_pretrain.run(config, workdir)
    assert resumed["resumed_from"] == 4 and resumed["trained_steps"] == 4
    jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(straight))
    assert resumed["summary"]["zero_shot_accuracy"] == straight["summary"]["zero_shot_accuracy"]


@pytest.mark.parametrize(
    "module,arg",
    [
        (clip_config, None),
        (clip_config, "noise=0.2,seed=1,bf16"),
        (clip_yfcc15m, "noise=0.1"),
        (clip_yfcc15m, "model=vit_b16,noise=0.3"),
    ],
)
def test_config_variants_resolve(module, arg):
    config = module.get_config(arg)
    clip_pretrain.validate(config)
    assert config.stage == "clip_pretrain" and config.noise.kind == "caption_swap"


def test_yfcc15m_config_is_the_stated_recipe():
    config = clip_yfcc15m.get_config("noise=0.2")
    assert config.model.text.to_dict() == defaults.CLIP_SIZES["rn50"]["text"]
    assert (config.input.batch_size, config.total_epochs, config.warmup_steps) == (4096, 32.0, 2000)
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.weight_decay) == (
        "adamw",
        5e-4,
        0.2,
    )
    assert config.model.dtype == "bfloat16" and config.noise.ratio == 0.2
    with pytest.raises(config_lib.ConfigError, match="noise"):
        clip_yfcc15m.get_config("noise=0.15")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("noise", defaults.noise_block("symmetric", 0.1), "noise.kind"),
        ("total_steps", 0, "total_steps"),
        ("shards", None, None),
    ],
)
def test_invalid_config_names_the_key(key, value, match):
    config = tiny_config()
    config[key] = value
    if key == "shards":
        config.dataset = clip_pretrain.TFRECORD
        match = "config.shards"
    with pytest.raises(config_lib.ConfigError, match=match):
        clip_pretrain.validate(config)
