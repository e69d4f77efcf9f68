"""Cost of resuming a streamed CLIP run: time to the first batch at step 0 and deep into a later epoch.

Writes 40 TFRecord shards of 500 image-caption pairs (16x16 JPEGs, ~15-word captions) into a temporary
directory, then times `captions.stream_pairs` (caption swap r=0.1 within shards, captions tokenized per shard,
global batch 100, shuffle blocks of 2,000 records) from the call to its first batch, at step 0 and at a step in
epoch 3, and one epoch of batches from step 0. Block streaming makes the first two about equal: a resume reads
only the shards of its block.

    python -m benchmarks.stream_resume [--quick]      # --quick: 10 shards
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from benchmarks import common
from nml_jax import defaults, noise, tokenizer
from nml_jax.data import captions

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "small",
    "red",
    "dog",
    "cat",
    "car",
    "ship",
    "on",
    "grass",
    "near",
]


def write(directory: str, num_shards: int, per_shard: int) -> list[str]:
    rng = np.random.default_rng(0)
    n = num_shards * per_shard
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    texts = [" ".join(rng.choice(WORDS, 15)) + f" {i}" for i in range(n)]
    return captions.write_shards(os.path.join(directory, "pairs"), images, texts, num_shards)


def first_batch_seconds(files, counts, start_step: int, common: dict) -> float:
    start = time.perf_counter()
    next(captions.stream_pairs(files, counts, start_step=start_step, **common))
    return time.perf_counter() - start


def epoch_seconds(files, counts, steps: int, common: dict) -> float:
    """Seconds for `steps` batches from step 0 (the first batch included)."""
    start = time.perf_counter()
    batches = captions.stream_pairs(files, counts, **common)
    for _ in range(steps):
        next(batches)
    return time.perf_counter() - start


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    machine = common.machine()
    num_shards, per_shard, batch = (10 if args.quick else 40), 500, 100
    with tempfile.TemporaryDirectory(prefix="nml_resume_") as directory:
        files = write(directory, num_shards, per_shard)
        counts = captions.count_records(files)
        n = sum(counts)
        record = noise.make_caption_noise(n, defaults.noise_block("caption_swap", 0.1, 0), counts)
        tok = tokenizer.train(captions.first_captions(files, 2000), vocab_size=1000)
        common_args = dict(
            caption_index=record["caption_index"],
            is_noisy=record["is_noisy"],
            tokenize=lambda t: tok.encode(t, 32),
            global_batch=batch,
            seed=0,
            pp="decode(3)",
            shuffle_buffer=2000,
            process_index=0,
            process_count=1,
        )
        late = 3 * n // batch + n // (2 * batch)  # Half-way through epoch 3.
        first_batch_seconds(files, counts, 0, common_args)  # Warm-up: tracing, file cache.
        result = {
            "pairs": n,
            "shards": num_shards,
            "resume_step": late,
            "records_before_resume_point": late * batch,
            "first_batch_s_step_0": round(first_batch_seconds(files, counts, 0, common_args), 3),
            "first_batch_s_resumed": round(
                first_batch_seconds(files, counts, late, common_args), 3
            ),
            "one_epoch_s": round(epoch_seconds(files, counts, n // batch, common_args), 3),
        }
    common.report("stream_resume", machine, [result])


if __name__ == "__main__":
    main()
