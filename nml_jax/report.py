"""The human view of results.csv and spectrum.json: tables, the paper's claims tested, figures.

Pure functions of rows and spectra (no training), so a report can be rebuilt from the files of any workdir.
The statistics of the claims (one number per seed, t intervals, Holm's correction) are in nml_jax.stats.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from nml_jax import config_lib, files, results, spectrum, stats
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


# The embedded study pre-trains on Fashion-MNIST, whose ID task (and test domain) is named `fashion_mnist`.
PRETRAIN_DOMAINS = ("fashion_mnist",)
# A test set whose clean (noise 0) LP accuracy is at most this multiple of chance is flagged as near chance.
CHANCE_FACTOR = 1.5
NOT_TESTABLE = "not testable"
# Claim id -> (statement, unit). Each estimate is signed so that > 0 is the claim's direction.
CLAIMS = {
    "slight_noise_helps_id": (
        "Slight noise (0 < r <= 0.1) raises ID accuracy (LP): noisy minus clean",
        "accuracy points",
    ),
    "noise_hurts_ood": (
        "Any noise (r > 0) lowers OOD accuracy (LP): clean minus noisy",
        "accuracy points",
    ),
    "noise_raises_sve": ("Noise (r > 0) raises SVE: noisy minus clean", "nats"),
    "noise_raises_lsvr": ("Noise (r > 0) raises LSVR: noisy minus clean", "nats"),
    "nmtune_beats_lp_id": ("NMTune beats LP on ID sets: NMTune minus LP", "accuracy points"),
    "nmtune_beats_lp_ood": ("NMTune beats LP on OOD sets: NMTune minus LP", "accuracy points"),
    "nmtune_beats_mlp_id": ("NMTune beats MLP on ID sets: NMTune minus MLP", "accuracy points"),
    "nmtune_beats_mlp_ood": ("NMTune beats MLP on OOD sets: NMTune minus MLP", "accuracy points"),
}

TestSet = tuple[str, str]  # (task, test_domain)


def _run_key(r: Row) -> tuple[float, int]:
    return noise_key(r.noise_ratio), r.seed


def _run_label(run: tuple[float, int]) -> str:
    return f"noise {noise_label(run[0])} seed {run[1]}"


def _set_label(test_set: TestSet) -> str:
    return f"{test_set[0]}/{test_set[1]}"


def check_runs(rows: list[Row]) -> None:
    """Raises ValueError unless every run (noise, seed) has the same methods, each on the same test sets.

    Paired and noise claims compare runs; a method or test set present in some runs only would compare
    different things, so the error names what differs and where.
    """
    methods: dict[tuple[float, int], set[str]] = defaultdict(set)
    sets: dict[tuple[float, int, str], set[tuple[str, str, str]]] = defaultdict(set)
    for r in rows:
        methods[_run_key(r)].add(r.method)
        sets[(*_run_key(r), r.method)].add((r.kind, r.task, r.test_domain))
    _check_same(methods, "method sets", _run_label)
    _check_same(sets, "test sets", lambda k: f"{_run_label(k[:2])} {k[2]}")


def _check_same(groups: dict, what: str, label) -> None:
    variants: dict[frozenset, list] = defaultdict(list)
    for key, members in sorted(groups.items()):
        variants[frozenset(members)].append(key)
    if len(variants) <= 1:
        return
    common = max(variants, key=lambda v: len(variants[v]))
    lines = []
    for members, keys in variants.items():
        where = ", ".join(label(k) for k in keys[:4]) + (
            f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        )
        diff = ""
        if members != common:
            missing, extra = sorted(map(str, common - members)), sorted(map(str, members - common))
            diff = f" (missing {missing}, extra {extra} against the most common set)"
        lines.append(f"{where}: {sorted(map(str, members))}{diff}")
    raise ValueError(
        f"The results mix {what} across runs, so runs cannot be compared:\n  " + "\n  ".join(lines)
    )


def chance_level(value: float) -> float:
    """A number of classes (>= 1) becomes 1 / value; a value in (0, 1) already is the chance level."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"chance={value!r}: expected a number of classes or a chance level in (0, 1)."
        )
    return 1.0 / value if value >= 1 else float(value)


def near_chance(
    rows: list[Row], chance: dict[str, float] | None
) -> tuple[dict[TestSet, tuple[float, float]], str]:
    """Test sets whose clean LP accuracy is at most CHANCE_FACTOR x chance, and a sentence on what was done.

    The clean LP accuracy of a set is its mean over seeds at noise 0. `chance` maps a test domain to its number
    of classes or its chance level; nothing is inferred, so without it (or without clean LP rows) nothing is
    flagged. Returns {(task, test_domain): (clean accuracy, chance level)}.
    """
    if chance is None:
        return (
            {},
            "No chance levels were given, so no test set is flagged as near chance (none is inferred).",
        )
    clean: dict[TestSet, list[float]] = defaultdict(list)
    for r in rows:
        if r.method == "lp" and noise_key(r.noise_ratio) == 0.0:
            clean[(r.task, r.test_domain)].append(r.accuracy)
    if not clean:
        return (
            {},
            "No clean (noise 0) LP accuracy in these results, so no test set is flagged as near chance.",
        )
    flagged, unknown = {}, []
    for test_set, accs in sorted(clean.items()):
        if test_set[1] not in chance:
            unknown.append(_set_label(test_set))
            continue
        level = chance_level(chance[test_set[1]])
        if np.mean(accs) <= CHANCE_FACTOR * level:
            flagged[test_set] = (float(np.mean(accs)), level)
    note = (
        f"Test sets whose clean (noise 0) LP accuracy is at most {CHANCE_FACTOR:g} x chance are near chance: "
        + (
            ", ".join(
                f"{_set_label(k)} ({100 * a:.1f}% vs chance {100 * c:.1f}%)"
                for k, (a, c) in flagged.items()
            )
            if flagged
            else "none"
        )
        + ". They are marked in the per-set table and left out of the claims and the mean-accuracy tables."
    )
    if unknown:
        note += f" No chance level given (not checked): {', '.join(unknown)}."
    return flagged, note


def _sets(rows: list[Row], kind: str, keep) -> list[TestSet]:
    return sorted({(r.task, r.test_domain) for r in rows if r.kind == kind and keep(r)})


def _set_means(rows: list[Row], method: str, sets: list[TestSet]) -> dict[tuple[float, int], float]:
    """{(noise, seed): mean accuracy in points over `sets`} of `method`."""
    wanted = set(sets)
    groups: dict[tuple[float, int], list[float]] = defaultdict(list)
    for r in rows:
        if r.method == method and (r.task, r.test_domain) in wanted:
            groups[_run_key(r)].append(100 * r.accuracy)
    return {k: float(np.mean(v)) for k, v in groups.items()}


def _per_seed(
    rows, spectra, claim: str, sets: list[TestSet]
) -> tuple[dict[int, float], list[float], str]:
    """One claim on `sets`: ({seed: number}, noise levels used, note when it cannot be computed)."""
    if claim.startswith("nmtune_beats_"):
        base = claim.split("_")[2]
        present = {r.method for r in rows}
        missing = sorted({"nmtune", base} - present)
        if missing:
            return {}, [], f"no {' or '.join(METHOD_NAMES[m] for m in missing)} rows"
        tuned, other = _set_means(rows, "nmtune", sets), _set_means(rows, base, sets)
        levels = sorted({n for n, _ in set(tuned) & set(other)})
        return stats.paired_per_seed(tuned, other), levels, ""
    if claim.startswith("noise_raises_"):
        metric = claim.rsplit("_", 1)[1]
        values = {(noise_key(n), s): v[metric] for (n, s), v in spectra.items() if metric in v}
    else:
        if "lp" not in {r.method for r in rows}:
            return {}, [], "no LP rows"
        values = _set_means(rows, "lp", sets)
    if not values:
        return {}, [], "no data"
    noises = sorted({n for n, _ in values if n >= 0})
    if 0.0 not in noises:
        return (
            {},
            [],
            (
                "no clean (noise 0) run: noise claims compare each seed with its own clean run; "
                f"noise levels present: {[noise_label(n) for n in sorted({n for n, _ in values})]}"
            ),
        )
    if claim == "slight_noise_helps_id":
        levels = [n for n in noises if 0 < n <= 0.1]
    else:
        levels = [n for n in noises if n > 0]
    if not levels:
        return {}, [], "no noisy run in the claim's range"
    per_seed = stats.noise_effect_per_seed(values, levels)
    if claim == "noise_hurts_ood":
        per_seed = {s: -d for s, d in per_seed.items()}
    return per_seed, [0.0, *levels], ""


def _interval(values) -> list[float] | None:
    return list(stats.t_interval(values, 0.95)) if len(values) >= 2 else None


def _descriptive(rows, spectra, claim: str, scope: str, sets: list[TestSet]) -> dict:
    per_seed, levels, note = _per_seed(rows, spectra, claim, sets)
    values = list(per_seed.values())
    return {
        "scope": scope,
        "estimate": float(np.mean(values)) if values else None,
        "ci95": _interval(values),
        "n_seeds": len(values),
        "tasks": [_set_label(k) for k in sets],
        "noise_levels": levels,
        "note": note,
    }


def claims(
    rows: list[Row],
    spectra_by_run: dict[tuple[float, int], dict[str, float]],
    *,
    pretrain_domains: Iterable[str] = PRETRAIN_DOMAINS,
    chance: dict[str, float] | None = None,
) -> list[dict]:
    """The paper's claims tested on these numbers, one JSON-ready dict per claim id of CLAIMS.

    Each claim is reduced to one number per seed (stats.noise_effect_per_seed for noise claims, with every
    noise level compared with the same seed's clean run; stats.paired_per_seed for NMTune against a baseline),
    in accuracy points for accuracy claims (mean over the claim's test sets of the run). The claims with
    >= stats.MIN_SEEDS seeds are one Holm family (stats.judge). Test sets:

    - ID claims: the ID test sets except those of `pretrain_domains` (a model is not transferred to its own
      pre-training data); the pre-training set's own task is reported in `breakdown`, labelled as such.
    - OOD claims: every OOD test set pooled, and each source task (train_domain) in `breakdown`.
    - Any set flagged by `near_chance` (clean LP accuracy <= 1.5 x chance, from `chance`) is left out.
    - SVE/LSVR: the per-run values of `spectra_by_run` ({(noise, seed): {'sve', 'lsvr'}}).

    Returns dicts with "claim", "statement", "unit", "estimate", "ci95" ([lo, hi], uncorrected 95% t interval),
    "ci_holm" and "ci_holm_level" (the interval that agrees with the verdict), "p", "p_holm", "n_seeds",
    "verdict" (supported / contradicted / inconclusive / too few seeds / not testable), "tasks", "noise_levels",
    "per_seed" ([[seed, number], ...]), "note" and "breakdown" (descriptive, no verdicts). Raises ValueError
    when runs have different methods or test sets (check_runs).
    """
    check_runs(rows)
    pretrain = set(pretrain_domains)
    flagged, _ = near_chance(rows, chance)
    usable = lambda r: (r.task, r.test_domain) not in flagged
    id_sets = _sets(rows, "id", lambda r: usable(r) and r.test_domain not in pretrain)
    own_sets = _sets(rows, "id", lambda r: usable(r) and r.test_domain in pretrain)
    ood_sets = _sets(rows, "ood", usable)
    per_seed, info = {}, {}
    for claim in CLAIMS:
        spectral = claim.startswith("noise_raises_")
        sets = [] if spectral else id_sets if claim.endswith("_id") else ood_sets
        if sets or spectral:
            values, levels, note = _per_seed(rows, spectra_by_run, claim, sets)
        else:
            values, levels, note = {}, [], "no test set of this kind is left for this claim"
        if not note:
            per_seed[claim] = [values[s] for s in sorted(values)]
        breakdown = _breakdown(rows, spectra_by_run, claim, own_sets, usable, pretrain)
        info[claim] = (values, levels, note, sets, breakdown)
    verdicts = stats.judge(per_seed)
    return [
        _claim_result(claim, statement, unit, verdicts.get(claim), *info[claim])
        for claim, (statement, unit) in CLAIMS.items()
    ]


def _breakdown(rows, spectra, claim: str, own_sets, usable, pretrain) -> list[dict]:
    """Descriptive rows beside a claim: the pre-training set's own ID task, or each OOD source task."""
    if claim.endswith("_id"):
        return [
            _descriptive(rows, spectra, claim, f"pre-training set {k[1]} (not in the claim)", [k])
            for k in own_sets
        ]
    if not claim.endswith("_ood"):
        return []
    out = []
    for source in sorted({r.train_domain for r in rows if r.kind == "ood" and usable(r)}):
        sets = _sets(rows, "ood", lambda r, s=source: usable(r) and r.train_domain == s)
        label = f"source {source}" + (" (the pre-training set)" if source in pretrain else "")
        out.append(_descriptive(rows, spectra, claim, label, sets))
    return out


def _claim_result(claim, statement, unit, v, values, levels, note, sets, breakdown) -> dict:
    """One claim's JSON-ready dict (see `claims`); `v` is its stats.judge verdict or None."""
    if claim.startswith("noise_raises_") and not note:
        note = (
            "per-run values of spectra_by_run (analyze.mean_spectrum: the mean over every ID test set, "
            "the pre-training set included)"
        )
    return {
        "claim": claim,
        "statement": statement,
        "unit": unit,
        "estimate": v.estimate if v else None,
        "ci95": list(v.ci95) if v and v.ci95 else None,
        "ci_holm": list(v.ci_holm) if v and v.ci_holm else None,
        "ci_holm_level": v.level if v else None,
        "p": v.p if v else None,
        "p_holm": v.p_holm if v else None,
        "n_seeds": v.n if v else 0,
        "verdict": v.verdict if v else NOT_TESTABLE,
        "tasks": [_set_label(k) for k in sets],
        "noise_levels": levels,
        "per_seed": [[s, values[s]] for s in sorted(values)],
        "note": note,
        "breakdown": breakdown,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if unit == "accuracy points" else f"{value:+.4f}"


def _fmt_interval(interval: list[float] | None, unit: str) -> str:
    if not interval:
        return "–"
    return f"[{_fmt(interval[0], unit)}, {_fmt(interval[1], unit)}]"


def claims_markdown(results: list[dict], pretrain_domains: Iterable[str], chance_note: str) -> str:
    """The claims section of report.md: verdict table, how it was computed, the descriptive breakdown."""
    lines = [
        "| claim | estimate | 95% interval | Holm interval (level) | seeds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in results:
        level = f" ({100 * c['ci_holm_level']:.2f}%)" if c["ci_holm_level"] else ""
        verdict = c["verdict"] + (f": {c['note']}" if c["verdict"] == NOT_TESTABLE else "")
        lines.append(
            f"| `{c['claim']}`: {c['statement']} | {_fmt(c['estimate'], c['unit'])} | "
            f"{_fmt_interval(c['ci95'], c['unit'])} | {_fmt_interval(c['ci_holm'], c['unit'])}{level} | "
            f"{c['n_seeds']} | {verdict} |"
        )
    lines += [
        "",
        "Estimates are in accuracy points (SVE and LSVR in nats), signed so that > 0 is the claim's direction. "
        "Each claim is first reduced to ONE number per seed: a noise claim averages, over the noise levels "
        "listed, the change from the same seed's clean (noise 0) run; an NMTune claim averages, over the seed's "
        "runs, NMTune minus the baseline on the same features. Accuracy claims average the test sets listed "
        "below. The interval is the two-sided t interval over seeds (n - 1 degrees of freedom). The m claims "
        f"with at least {stats.MIN_SEEDS} seeds are corrected together with Holm's method: a claim is "
        "'supported' or 'contradicted' (the sign decides) when its Holm-adjusted p < 0.05, else "
        "'inconclusive'. Its Holm interval is at level 1 - 0.05 / (m - r + 1), with r its rank among the "
        "p-values (r stops growing at the first rank Holm does not reject), so it excludes 0 exactly for "
        f"those verdicts. Fewer than {stats.MIN_SEEDS} seeds: 'too few seeds', no test.",
        "",
        f"ID claims leave out the pre-training set's own test set ({', '.join(sorted(pretrain_domains))}): "
        "a model is not transferred to its own pre-training data"
        + (
            "; it is in the breakdown below, labelled. "
            if any(
                b["scope"].startswith("pre-training set") for c in results for b in c["breakdown"]
            )
            else " (no such set in these results). "
        )
        + chance_note,
        "",
        "Per-seed numbers, noise levels and test sets of each claim:",
        "",
    ]
    for c in results:
        if c["verdict"] == NOT_TESTABLE:
            continue
        seeds = ", ".join(f"{s}: {_fmt(v, c['unit'])}" for s, v in c["per_seed"])
        levels = ", ".join(noise_label(n) for n in c["noise_levels"])
        where = f"{len(c['tasks'])} test sets: {', '.join(c['tasks'])}" if c["tasks"] else c["note"]
        lines.append(f"- `{c['claim']}`: seeds {{{seeds}}}; noise levels {levels}; {where}")
    rows = [(c, b) for c in results for b in c["breakdown"]]
    if rows:
        lines += [
            "",
            "### Breakdown (descriptive: uncorrected 95% t intervals, no verdicts)",
            "",
            "| claim | scope | estimate | 95% interval | seeds | test sets |",
            "|---|---|---|---|---|---|",
        ]
        for c, b in rows:
            sets = b["note"] or f"{len(b['tasks'])}: {', '.join(b['tasks'])}"
            lines.append(
                f"| `{c['claim']}` | {b['scope']} | {_fmt(b['estimate'], c['unit'])} | "
                f"{_fmt_interval(b['ci95'], c['unit'])} | {b['n_seeds']} | {sets} |"
            )
    return "\n".join(lines)


def accuracy_table(rows: list[Row], kind: str, exclude: Iterable[TestSet] = ()) -> str:
    """Markdown: noise ratio x method, mean ± std over seeds of the mean accuracy over the `kind` test sets,
    except the (task, test_domain) sets in `exclude`."""
    left_out = set(exclude)
    rows = [r for r in rows if (r.task, r.test_domain) not in left_out]
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


def domain_table(rows: list[Row], marks: dict[TestSet, str] | None = None) -> str:
    """Markdown: every (kind, task, test domain) x method, mean over seeds and noise levels given.

    `marks` adds a note in brackets after a (task, test_domain), e.g. 'near chance'.
    """
    marks = marks or {}
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
        mark = f" ({marks[(task, domain)]})" if (task, domain) in marks else ""
        lines.append(f"| {kind} | {task} | {domain}{mark} | {values} |")
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


def markdown(
    rows: list[Row],
    spectra,
    title: str,
    figures: Iterable[str] = (),
    *,
    pretrain_domains: Iterable[str] = PRETRAIN_DOMAINS,
    chance: dict[str, float] | None = None,
) -> str:
    """The whole report.md; `pretrain_domains` and `chance` as in `claims`."""
    pretrain_domains = tuple(pretrain_domains)
    seeds = sorted({r.seed for r in rows})
    flagged, chance_note = near_chance(rows, chance)
    own = set(_sets(rows, "id", lambda r: r.test_domain in pretrain_domains))
    marks = {k: "pre-training set, not in the ID claims" for k in own}
    marks.update({k: "near chance, left out of the claims and means" for k in flagged})
    left_out = {
        kind: sorted(
            (own if kind == "id" else set())
            | (set(flagged) & set(_sets(rows, kind, lambda r: True)))
        )
        for kind in ("id", "ood")
    }
    parts = [
        f"# {title}",
        "",
        f"Seeds: {seeds} ({len(seeds)}). Accuracy in percent, mean ± std over seeds (std '–' with one seed).",
        "",
    ]
    for kind, name in (("id", "In-domain (ID)"), ("ood", "Out-of-domain (OOD)")):
        parts += [
            f"## {name} mean accuracy (left out: {', '.join(map(_set_label, left_out[kind])) or 'none'})",
            accuracy_table(rows, kind, exclude=left_out[kind]),
            "",
        ]
    if spectra:
        parts += ["## Feature spectrum (mean over ID test sets)", spectrum_table(spectra), ""]
    if rows or spectra:
        results = claims(rows, spectra, pretrain_domains=pretrain_domains, chance=chance)
        parts += [
            "## The paper's claims against these numbers",
            "",
            claims_markdown(results, pretrain_domains, chance_note),
            "",
        ]
    parts += [
        "## Every test set (mean ± std over every run above, all noise levels together)",
        domain_table(rows, marks),
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
    files.save_figure(fig, path, dpi=120)
    plt.close(fig)


REPORT_FILE = "report.md"


CLAIMS_FILE = "claims.json"


def write(
    workdir: str,
    rows: list[Row],
    spectra,
    title: str,
    figures: Iterable[str] = (),
    *,
    pretrain_domains: Iterable[str] = PRETRAIN_DOMAINS,
    chance: dict[str, float] | None = None,
) -> str:
    """Writes `<workdir>/report.md` (figures given relative to the workdir) and `<workdir>/claims.json` (the
    claims as `claims` returns them); returns the report's text."""
    context = {"pretrain_domains": tuple(pretrain_domains), "chance": chance}
    files.write_json(os.path.join(workdir, CLAIMS_FILE), claims(rows, spectra, **context))
    text = markdown(rows, spectra, title, figures=figures, **context)
    files.write_text(os.path.join(workdir, REPORT_FILE), text)
    return text


def spectrum_points(rows: list[Row], spectra) -> list[dict]:
    """Per run (noise, seed): the mean SVE and LSVR against the mean ID LP accuracy, for the scatter figure."""
    id_lp = seed_means(rows, "id", "lp")
    return [
        {"label": f"noise {noise_label(run[0])}", **spectra[run], "accuracy": id_lp[run]}
        for run in sorted(spectra)
        if run in id_lp
    ]


def write_runs(
    workdir: str,
    rows: list[Row],
    spectra,
    title: str,
    figures: Iterable[str] = (),
    **context,
) -> str:
    """The report of many runs (a study, or results gathered by the `report` stage): accuracy against noise
    and spectrum against accuracy figures, then `write` with them after `figures`."""
    files.makedirs(os.path.join(workdir, "figures"))
    made = ["figures/accuracy_vs_noise.png"]
    plot_accuracy_vs_noise(rows, os.path.join(workdir, made[0]))
    points = spectrum_points(rows, spectra)
    if points:
        made.append("figures/spectrum_vs_accuracy.png")
        spectrum.plot_metric_vs_accuracy(points, os.path.join(workdir, made[-1]))
    return write(workdir, rows, spectra, title, [*figures, *made], **context)


# ---------------------------------------------------------------------------------------------------------------
# Stage `report`: one report from results gathered anywhere.


def validate(config) -> None:
    """Raises ConfigError unless `config.results` names existing results.csv files (and spectra, if given)."""
    paths = _paths(config.results)
    if not paths:
        raise config_lib.ConfigError(
            "config.results is empty; expected one or more results.csv paths, comma-separated."
        )
    for key, group in (("results", paths), ("spectra", _paths(config.spectra))):
        for path in group:
            if not files.isfile(path):
                raise config_lib.ConfigError(f"config.{key}: {path!r} is not a file.")
    if config.get("num_classes") is not None:
        config_lib.check_positive_int("num_classes", config.num_classes)


def _paths(spec: str) -> list[str]:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def gather_rows(paths: Iterable[str]) -> list[Row]:
    """The rows of every results.csv; a row key found twice with different accuracies is an error."""
    merged: dict[tuple, tuple[Row, str]] = {}
    for path in paths:
        try:
            rows = results.read(path)
        except (ValueError, KeyError) as e:
            raise config_lib.ConfigError(f"{path} is not a results.csv: {e}") from None
        for row in rows:
            seen = merged.get(row.key())
            if seen and seen[0].accuracy != row.accuracy:
                raise config_lib.ConfigError(
                    f"{path} and {seen[1]} both hold {row.key()} with different accuracies "
                    f"({row.accuracy} vs {seen[0].accuracy}); give each run once."
                )
            merged[row.key()] = (row, path)
    return [row for row, _ in merged.values()]


_RUN_KEY = re.compile(r"^noise(?P<noise>[0-9.eE+-]+)_seed(?P<seed>-?\d+)$")


def read_spectra(
    paths: Iterable[str], exclude: Iterable[str] = ()
) -> dict[tuple[float, int], dict]:
    """{(noise, seed): mean SVE/LSVR over the ID test sets} from spectrum.json files of single runs (transfer,
    nmtune) or of a study ({"noise<r>_seed<s>": test sets})."""
    out = {}
    for path in paths:
        data = files.read_json(path)
        if "test_sets" in data:
            runs = {(float(data["noise_ratio"]), int(data["seed"])): data["test_sets"]}
        else:
            runs = {}
            for key, sets in data.items():
                match = _RUN_KEY.match(key)
                if not match:
                    raise config_lib.ConfigError(
                        f"{path}: {key!r} is not a run key like noise0.1_seed0."
                    )
                runs[(float(match["noise"]), int(match["seed"]))] = sets
        for run, sets in runs.items():
            chosen = [s for name, s in sets.items() if s["kind"] == "id" and name not in exclude]
            out[run] = {m: float(np.mean([s[m] for s in chosen])) for m in ("sve", "lsvr")}
    return out


def run(config, workdir: str) -> dict:
    """Stage `report`: report.md, claims.json and figures from the given results.csv (and spectrum.json) files."""
    rows = gather_rows(_paths(config.results))
    try:
        check_runs(rows)
    except ValueError as e:
        raise config_lib.ConfigError(f"The results cannot be compared: {e}") from None
    pretrain_domains = tuple(d.strip() for d in config.pretrain_domains.split(",") if d.strip())
    spectra = read_spectra(_paths(config.spectra), exclude=pretrain_domains)
    domains = {r.test_domain for r in rows}
    chance = (
        None if config.get("num_classes") is None else dict.fromkeys(domains, config.num_classes)
    )
    text = write_runs(
        workdir, rows, spectra, config.title, pretrain_domains=pretrain_domains, chance=chance
    )
    print(text.split("## Every test set")[0])
    return {"rows": rows, "spectra": spectra}
