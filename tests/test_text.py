"""Tests for the MiniLM encoder, the text sets and the cached text features."""

import importlib.util
import os
import re

import numpy as np
import pytest

from nml_jax import encoders, features, nmtune_text, parallel
from nml_jax.data import text
from nml_jax.models import minilm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_reference.npz")
CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def encoder():
    return encoders.text_encoder()


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def test_encoder_matches_pytorch_reference(encoder, reference):
    sentences = [str(s) for s in reference["sentences"]]
    input_ids, mask = encoder.tokenizer(sentences)
    np.testing.assert_array_equal(input_ids, reference["input_ids"])
    np.testing.assert_array_equal(mask, reference["attention_mask"])
    embeddings = np.asarray(minilm.encode(encoder.params, input_ids, mask))
    assert embeddings.shape == (len(sentences), minilm.EMBED_DIM)
    np.testing.assert_allclose(embeddings, reference["embeddings"], atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


def test_padding_never_changes_embeddings(encoder, reference):
    sentences = [str(s) for s in reference["sentences"][:8]]
    ids = encoder.tokenizer.tokenize(sentences)
    assert [len(x) for x in ids[:4]] == [4, 16, 14, 18], "the shipped 128-padding leaked through"
    alone = [np.asarray(minilm.encode(encoder.params, *minilm.pad_batch([x]))) for x in ids[:2]]
    padded = np.asarray(minilm.encode(encoder.params, *encoder.tokenizer(sentences, pad_to=128)))
    np.testing.assert_allclose(padded[:2], np.concatenate(alone), atol=2e-6)
    np.testing.assert_allclose(padded, reference["embeddings"], atol=2e-6)


def test_unmasked_padding_would_be_wrong(encoder, reference):
    """The trap the tokenizer wrapper avoids: 128 [PAD] tokens counted as text move the embedding."""
    input_ids, mask = encoder.tokenizer([str(reference["sentences"][1])], pad_to=128)
    wrong = np.asarray(minilm.encode(encoder.params, input_ids, np.ones_like(mask)))
    assert np.abs(wrong - reference["embeddings"][1]).max() > 1e-2


def test_tokenizer_truncates_explicitly():
    tokenizer = minilm.MiniLMTokenizer(os.path.join(minilm.model_dir(), "tokenizer.json"), 16)
    (long_ids, short_ids) = tokenizer.tokenize(["word " * 50, "hi"])
    assert len(long_ids) == 16 and long_ids[0] == CLS and long_ids[-1] == SEP
    np.testing.assert_array_equal(short_ids, [CLS, 7632, SEP])
    with pytest.raises(ValueError, match="max_len=1 "):
        minilm.MiniLMTokenizer(os.path.join(minilm.model_dir(), "tokenizer.json"), 1)
    with pytest.raises(ValueError, match="pad_to=2 is shorter"):
        minilm.pad_batch([long_ids], 2)


def test_missing_packages_name_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=re.escape(minilm.PIP_COMMAND)):
        minilm.model_dir()
    with pytest.raises(text.DataSourceError, match=re.escape(text.TWEETS_PIP)):
        text._package_file(*text.TWEETS_CSV, text.TWEETS_PIP)
    with pytest.raises(text.DataSourceError, match=re.escape(text.DRUGS_PIP)):
        text._package_file(*text.DRUGS_ZIP, text.DRUGS_PIP)


def test_segment_topics_recovers_ordered_runs():
    # Three topics in order 0, 1, 2 with an outlier vote (2 inside run 0) and unlabelled rows (-1).
    votes = np.array([0, -1, 0, 2, 0, 1, 1, -1, 1, 2, -1, 2])
    np.testing.assert_array_equal(
        text.segment_topics(votes, 3), [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    )
    # A topic with no votes gets an empty run.
    np.testing.assert_array_equal(text.segment_topics(np.array([0, 0, 2, 2]), 3), [0, 0, 2, 2])


def test_tweet_domains_and_label_counts():
    texts, labels, topics = text.load_tweets()
    assert len(texts) == 38158 == sum(text.TOPIC_COUNTS.values())
    counts = {t: int(np.sum(topics == i)) for i, t in enumerate(text.TOPICS)}
    assert counts == text.TOPIC_COUNTS
    # The published Twitter US Airline Sentiment counts (negative, neutral, positive).
    airline = labels[topics == text.TOPICS.index("airline")]
    assert tuple(np.bincount(airline)) == (9178, 3099, 2363)
    votes = np.array([text.keyword_topic(t) for t in texts])
    assert np.sum((votes >= 0) & (votes != topics)) <= 5, "keyword votes disagree with the runs"
    assert all("@" in texts[i] for i in np.flatnonzero(topics == 1)[:50])


def test_sets_share_one_label_space_and_drug_reviews_are_clean():
    apple_texts, apple_labels = text.load("apple")
    other_texts, other_labels = text.load("other_topics")
    drug_texts, drug_labels = text.load("drug_reviews", "all")
    assert len(apple_texts) == 3804 and len(other_texts) == 19714 and len(drug_texts) == 979
    for labels in (apple_labels, other_labels, drug_labels):
        assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2}
    assert tuple(np.bincount(drug_labels)) == (256, 90, 633)
    assert not any("&#039;" in t or "&amp;" in t or t.startswith('"') for t in drug_texts)
    assert sum("'" in t for t in drug_texts) > 100
    with pytest.raises(ValueError, match="'imdb'"):
        text.load("imdb")
    with pytest.raises(ValueError, match="no split 'train'"):
        text.load("apple", "train")


def test_airline_split_is_stratified_and_deterministic():
    train_texts, _ = text.load("airline", "train")
    test_texts, test_labels = text.load("airline", "test")
    # 14,640 tweets, 213 exact-text repeats, 25 texts whose copies disagree on the label (dropped).
    assert len(train_texts) + len(test_texts) == 14402
    all_texts, _ = text._tweets_of(("airline",))
    assert len(set(all_texts)) == 14427
    assert len(set(train_texts + test_texts)) == 14402 and not set(train_texts) & set(test_texts)
    assert set(train_texts + test_texts) <= set(all_texts)
    assert tuple(np.bincount(test_labels)) == (1816, 609, 455)  # round(0.2 * n_c) per class
    again_texts, again_labels = text.load("airline", "test")
    assert again_texts == test_texts
    np.testing.assert_array_equal(again_labels, test_labels)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train0, test0 = text.stratified_split(labels, 0.2, seed=0)
    _, test1 = text.stratified_split(labels, 0.2, seed=1)
    np.testing.assert_array_equal(np.bincount(labels[test0]), [10, 6, 4])
    assert not np.array_equal(test0, test1)
    np.testing.assert_array_equal(np.sort(np.concatenate([train0, test0])), np.arange(100))
    with pytest.raises(ValueError, match=r"test_fraction=1\.5"):
        text.stratified_split(labels, 1.5, seed=0)


def test_unique_texts_keeps_one_copy_and_drops_disagreeing_labels():
    texts = ["a", "b", "a", "c", "b", "d", "a"]
    labels = np.array([0, 1, 0, 2, 2, 1, 0])
    # "a" x3 with one label: first copy kept; "b" has labels 1 and 2: dropped; "c", "d" unique.
    np.testing.assert_array_equal(text.unique_texts(texts, labels), [0, 3, 5])


def test_bucketing_helpers():
    assert [encoders.bucket_length(n, 16, 128) for n in (3, 16, 17, 120, 128)] == [
        16,
        16,
        32,
        128,
        128,
    ]
    assert encoders.bucket_length(130, 16, 128) == 130
    batches = encoders.length_batches(np.array([5, 1, 4, 1, 3]), 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2], [0]]


def test_embed_texts_sharded_matches_one_batch(encoder):
    texts, _ = text.load("drug_reviews", "test")
    texts = (
        texts[:6] + ["ok", "@united thanks!", "Great app", "meh"] + [t[:200] for t in texts[6:12]]
    )
    mesh = parallel.make_mesh(4)
    embedded = encoder.features(texts, batch_size=8, mesh=mesh)
    assert embedded.shape == (16, minilm.EMBED_DIM) and embedded.dtype == np.float32
    # One padded batch in the original order (padding invariance is tested above).
    expected = np.asarray(minilm.encode(encoder.params, *encoder.tokenizer(texts, pad_to=128)))
    np.testing.assert_allclose(embedded, expected, atol=2e-6)
    with pytest.raises(ValueError, match="batch_size=6 must be divisible"):
        encoder.features(texts, batch_size=6, mesh=mesh)


def test_dataset_features_cache_hit(tmp_path, encoder, monkeypatch):
    mesh = parallel.make_mesh(4)
    feats, labels = nmtune_text.dataset_features(
        "apple", "all", cache_dir=str(tmp_path), encoder=encoder, limit=12, batch_size=8, mesh=mesh
    )
    path = nmtune_text.cache_path(str(tmp_path), encoder.fingerprint, "apple", "all", 128, 12)
    assert os.path.exists(path) and feats.shape == (12, 384) and labels.dtype == np.int64

    def fail(*args, **kwargs):
        raise AssertionError("the encoder ran on a cache hit")

    monkeypatch.setattr(encoder, "features", fail)
    again, again_labels = nmtune_text.dataset_features(
        "apple", "all", cache_dir=str(tmp_path), encoder=encoder, limit=12, batch_size=8, mesh=mesh
    )
    np.testing.assert_array_equal(again, feats)
    np.testing.assert_array_equal(again_labels, labels)
    with pytest.raises(AssertionError, match="cache hit"):  # Another subsample is another key.
        nmtune_text.dataset_features(
            "apple", "all", cache_dir=str(tmp_path), encoder=encoder, limit=13, mesh=mesh
        )


def test_build_text_task_npz_is_a_valid_features_file(tmp_path, encoder):
    path = str(tmp_path / "airline.npz")
    arrays = nmtune_text.build_text_task_npz(
        path,
        targets=("apple", "drug_reviews"),
        cache_dir=str(tmp_path / "cache"),
        encoder=encoder,
        limit=8,
        batch_size=8,
        mesh=parallel.make_mesh(4),
    )
    with np.load(path) as f:
        assert sorted(f.files) == sorted(arrays)
    assert arrays["ood_drug_reviews_features"].dtype == np.float32
    assert arrays["ood_apple_labels"].dtype == np.int64
    id_task, ood_task = features.load_npz(path)
    assert id_task.num_classes == 3 and id_task.train_features.shape == (8, 384)
    assert sorted(ood_task.tests) == ["apple", "drug_reviews"]
    with pytest.raises(ValueError, match="source='apple'"):
        nmtune_text.build_text_task_npz(path, source="apple", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="target 'airline'"):
        nmtune_text.build_text_task_npz(path, targets=("airline",), cache_dir=str(tmp_path))


@pytest.mark.slow
def test_nmtune_text_smoke_end_to_end(tmp_path):
    """configs/nmtune_text.py:smoke: embed, then LP/MLP/NMTune rows for the ID set and every OOD domain."""
    from nml_jax import config_lib, main, results

    config = config_lib.load_config(os.path.join(ROOT, "configs", "nmtune_text.py:smoke"))
    config.text.limit = 64
    main.run(config, str(tmp_path))
    rows = results.read(str(tmp_path / "results.csv"))
    domains = {(r.kind, r.test_domain) for r in rows}
    assert domains == {
        ("id", "airline"),
        ("ood", "apple"),
        ("ood", "other_topics"),
        ("ood", "drug_reviews"),
    }
    assert {r.method for r in rows} == {"lp", "mlp", "nmtune"} and len(rows) == 12
    assert all(0.0 <= r.accuracy <= 1.0 for r in rows)
    assert (tmp_path / "report.md").exists() and (tmp_path / "spectrum.json").exists()
