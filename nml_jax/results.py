"""results.csv: one row per (task, test domain, method, noise, seed), as the workdir contract states.

Columns: task,kind,train_domain,test_domain,method,noise_ratio,seed,accuracy. Writing merges by the row key, so
running a stage again replaces its rows instead of duplicating them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

from nml_jax import files

COLUMNS = (
    "task",
    "kind",
    "train_domain",
    "test_domain",
    "method",
    "noise_ratio",
    "seed",
    "accuracy",
)
KEY = ("task", "kind", "train_domain", "test_domain", "method", "noise_ratio", "seed")


@dataclasses.dataclass(frozen=True)
class Row:
    task: str
    kind: str
    train_domain: str
    test_domain: str
    method: str
    noise_ratio: float
    seed: int
    accuracy: float

    def key(self) -> tuple:
        return tuple(_format(getattr(self, k)) for k in KEY)


def _format(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)  # Shortest text that reads back exactly.
    return str(value)


def read(path: str) -> list[Row]:
    if not files.exists(path):
        return []
    with files.open_file(path, "r", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}; expected {list(COLUMNS)}.")
        return [
            Row(
                r["task"],
                r["kind"],
                r["train_domain"],
                r["test_domain"],
                r["method"],
                float(r["noise_ratio"]) if r["noise_ratio"] else math.nan,
                int(r["seed"]),
                float(r["accuracy"]),
            )
            for r in reader
        ]


def write(path: str, rows: list[Row]) -> list[Row]:
    """Merges `rows` into `path` (same key: replaced) and returns everything now in the file."""
    merged = {row.key(): row for row in read(path)}
    merged.update({row.key(): row for row in rows})
    ordered = sorted(
        merged.values(),
        key=lambda r: (r.noise_ratio, r.seed, r.kind, r.task, r.test_domain, r.method),
    )
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    for row in ordered:
        writer.writerow([_format(getattr(row, c)) for c in COLUMNS])
    files.write_text(path, text.getvalue())
    return ordered
