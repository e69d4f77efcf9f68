"""The human view of results.csv and spectrum.json: tables, the paper's claims checked, figures.

Pure functions of rows and spectra (no training), so a report can be rebuilt from the files of any workdir.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from nml_jax import files
from nml_jax.defaults import METHODS
from nml_jax.results import Row

METHOD_NAMES = {"lp": "LP", "mlp": "MLP", "nmtune": "NMTune"}
# Rows of black-box features carry no pre-training noise ratio (NaN in results.csv); NaN never equals itself,
# so the report groups them under this key and prints it as "–".
UNKNOWN_NOISE = -1.0


def noise_key(noise: float) -> float:
    return UNKNOWN_NOISE if math.isnan(noise) else noise


def noise_label(noise: float) -> str:
    return "–" if noise == UNKNOWN_NOISE else f"{noise:g}"


def seed_means(rows: Iterable[Row], kind: str, method: str) -> dict[tuple[float, int], float]:
    """Mean accuracy over every (task, test domain) of `kind`, for each (noise ratio, seed)."""
    groups: dict[tuple[float, int], list[float]] = defaultdict(list)
    for r in rows:
        if r.kind == kind and r.method == method:
            groups[(noise_key(r.noise_ratio), r.seed)].append(r.accuracy)
    return {k: float(np.mean(v)) for k, v in groups.items()}


def by_noise(per_seed: dict[tuple[float, int], float]) -> dict[float, np.ndarray]:
    """Regroups {(noise, seed): value} as {noise: values over seeds, ordered by seed}."""
    out: dict[float, list[tuple[int, float]]] = defaultdict(list)
    for (noise, seed), value in per_seed.items():
        out[noise].append((seed, value))
    return {k: np.array([v for _, v in sorted(vs)]) for k, vs in sorted(out.items())}


def mean_std(values: np.ndarray) -> str:
    """'mean ± std (n)' in percent; the std is over seeds (ddof=1), '–' with one seed."""
    if len(values) == 0:
        return "–"
    spread = f"{100 * np.std(values, ddof=1):.1f}" if len(values) > 1 else "–"
    return f"{100 * np.mean(values):.1f} ± {spread}"


def paired_verdict(diffs: np.ndarray) -> str:
    """'supported' when the mean paired difference is > 0 by more than two standard errors, 'contradicted' when
    < 0 by as much, 'inconclusive' otherwise (always with fewer than 2 pairs)."""
    if len(diffs) < 2:
        return "inconclusive (one seed)" if len(diffs) else "no data"
    se = np.std(diffs, ddof=1) / math.sqrt(len(diffs))
    mean = float(np.mean(diffs))
    if mean > 2 * se and mean > 0:
        return "supported"
    if mean < -2 * se and mean < 0:
        return "contradicted"
    return "inconclusive"


def _paired(a: dict[tuple[float, int], float], b: dict[tuple[float, int], float]) -> np.ndarray:
    """a - b over the (noise, seed) keys both have."""
    keys = sorted(set(a) & set(b))
    return np.array([a[k] - b[k] for k in keys])


def _at(per_seed: dict[tuple[float, int], float], noise: float) -> dict[int, float]:
    return {seed: v for (n, seed), v in per_seed.items() if n == noise}


def _noise_diffs(per_seed, high: Iterable[float], low: float = 0.0) -> np.ndarray:
    """Per seed: value at each noise in `high` minus value at `low` (same seed)."""
    base = _at(per_seed, low)
    diffs = []
    for noise in high:
        for seed, value in _at(per_seed, noise).items():
            if seed in base:
                diffs.append(value - base[seed])
    return np.array(diffs)


def claims(
    rows: list[Row], spectra: dict[tuple[float, int], dict[str, float]]
) -> list[tuple[str, str, str]]:
    """The paper's claims, each with a verdict from these numbers and the evidence in words.

    `spectra` maps (noise, seed) to {'sve': ..., 'lsvr': ...} (mean over the ID test sets).
    """
    out = []
    id_lp, ood_lp = seed_means(rows, "id", "lp"), seed_means(rows, "ood", "lp")
    noises = sorted({n for n, _ in id_lp})
    slight = [n for n in noises if 0 < n <= 0.1]
    if 0.0 in noises and slight:
        d = _noise_diffs(id_lp, slight)
        out.append(
            (
                "Slight noise (5-10%) raises ID accuracy (LP)",
                paired_verdict(d),
                f"mean change {100 * d.mean():+.2f} points over {len(d)} (noise, seed) pairs",
            )
        )
    noisy = [n for n in noises if n > 0]
    if 0.0 in noises and noisy:
        d = -_noise_diffs(ood_lp, noisy)
        out.append(
            (
                "Any noise lowers OOD accuracy (LP)",
                paired_verdict(d),
                f"mean drop {100 * d.mean():+.2f} points over {len(d)} (noise, seed) pairs",
            )
        )
        for metric in ("sve", "lsvr"):
            per_seed = {k: v[metric] for k, v in spectra.items() if metric in v}
            d = _noise_diffs(per_seed, noisy)
            out.append(
                (
                    f"Noise raises {metric.upper()}",
                    paired_verdict(d),
                    f"mean change {d.mean():+.4f} over {len(d)} (noise, seed) pairs"
                    if len(d)
                    else "no data",
                )
            )
    for kind in ("id", "ood"):
        tuned = seed_means(rows, kind, "nmtune")
        for base in ("lp", "mlp"):
            d = _paired(tuned, seed_means(rows, kind, base))
            if len(d):
                out.append(
                    (
                        f"NMTune beats {METHOD_NAMES[base]} ({kind.upper()})",
                        paired_verdict(d),
                        f"mean gain {100 * d.mean():+.2f} points over {len(d)} (noise, seed) runs",
                    )
                )
    return out


def accuracy_table(rows: list[Row], kind: str) -> str:
    """Markdown: noise ratio x method, mean ± std over seeds of the mean accuracy over every `kind` test set."""
    methods = [m for m in METHODS if any(r.method == m for r in rows)]
    columns = {m: by_noise(seed_means(rows, kind, m)) for m in methods}
    noises = sorted({n for col in columns.values() for n in col})
    lines = [
        f"| noise | seeds | {' | '.join(METHOD_NAMES[m] for m in methods)} |",
        "|---|---|" + "---|" * len(methods),
    ]
    for noise in noises:
        n = max(len(columns[m].get(noise, [])) for m in methods)
        cells = " | ".join(mean_std(columns[m].get(noise, np.array([]))) for m in methods)
        lines.append(f"| {noise_label(noise)} | {n} | {cells} |")
    return "\n".join(lines)


def domain_table(rows: list[Row]) -> str:
    """Markdown: every (kind, task, test domain) x method, mean over seeds and noise levels given."""
    methods = [m for m in METHODS if any(r.method == m for r in rows)]
    cells: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        cells[(r.kind, r.task, r.test_domain)][r.method].append(r.accuracy)
    lines = [
        f"| kind | task | test domain | {' | '.join(METHOD_NAMES[m] for m in methods)} |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for (kind, task, domain), by_method in sorted(cells.items()):
        values = " | ".join(mean_std(np.array(by_method.get(m, []))) for m in methods)
        lines.append(f"| {kind} | {task} | {domain} | {values} |")
    return "\n".join(lines)


def spectrum_table(spectra: dict[tuple[float, int], dict[str, float]]) -> str:
    spectra = {(noise_key(n), s): v for (n, s), v in spectra.items()}
    noises = sorted({n for n, _ in spectra})
    lines = ["| noise | seeds | SVE | LSVR |", "|---|---|---|---|"]
    for noise in noises:
        vals = [v for (n, _), v in sorted(spectra.items()) if n == noise]
        sve = np.array([v["sve"] for v in vals])
        lsvr = np.array([v["lsvr"] for v in vals])
        fmt = lambda x: f"{x.mean():.4f} ± {x.std(ddof=1):.4f}" if len(x) > 1 else f"{x.mean():.4f}"
        lines.append(f"| {noise_label(noise)} | {len(vals)} | {fmt(sve)} | {fmt(lsvr)} |")
    return "\n".join(lines)


def markdown(rows: list[Row], spectra, title: str, figures: Iterable[str] = ()) -> str:
    """The whole report.md."""
    seeds = sorted({r.seed for r in rows})
    parts = [
        f"# {title}",
        "",
        f"Seeds: {seeds} ({len(seeds)}). Accuracy in percent, mean ± std over seeds (std '–' with one seed).",
        "",
        "## In-domain (ID) mean accuracy",
        accuracy_table(rows, "id"),
        "",
        "## Out-of-domain (OOD) mean accuracy",
        accuracy_table(rows, "ood"),
        "",
    ]
    if spectra:
        parts += ["## Feature spectrum (mean over ID test sets)", spectrum_table(spectra), ""]
    verdicts = claims(rows, spectra)
    if verdicts:
        parts += [
            "## The paper's claims against these numbers",
            "",
            "| claim | verdict | evidence |",
            "|---|---|---|",
        ]
        parts += [f"| {c} | {v} | {e} |" for c, v, e in verdicts]
        parts += [
            "",
            "A verdict is 'supported' when the mean paired difference over (noise, seed) pairs exceeds two "
            "standard errors, 'contradicted' when it does so in the other direction, else 'inconclusive'.",
            "",
        ]
    parts += [
        "## Every test set (mean ± std over every run above, all noise levels together)",
        domain_table(rows),
        "",
    ]
    for fig in figures:
        parts.append(f"![{os.path.splitext(os.path.basename(fig))[0]}]({fig})")
    return "\n".join(parts) + "\n"


def plot_accuracy_vs_noise(rows: list[Row], path: str) -> None:
    """ID and OOD mean accuracy against noise ratio for each method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, kind in zip(axes, ("id", "ood")):
        for method in METHODS:
            grouped = by_noise(seed_means(rows, kind, method))
            if not grouped:
                continue
            noises = list(grouped)
            means = [100 * v.mean() for v in grouped.values()]
            stds = [100 * v.std(ddof=1) if len(v) > 1 else 0.0 for v in grouped.values()]
            ax.errorbar(noises, means, yerr=stds, marker="o", capsize=3, label=METHOD_NAMES[method])
        ax.set_title(f"{kind.upper()} mean accuracy")
        ax.set_xlabel("pre-training noise ratio")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPORT_FILE = "report.md"


def write(workdir: str, rows: list[Row], spectra, title: str, figures: Iterable[str] = ()) -> str:
    """Writes `<workdir>/report.md` (figures given relative to the workdir) and returns its text."""
    text = markdown(rows, spectra, title, figures=figures)
    files.write_text(os.path.join(workdir, REPORT_FILE), text)
    return text
