"""Stage `study`: the main job (nmtune) for every (noise ratio, seed), then one report of them all.

Each cell runs in its own sub-workdir `runs/noise<r>_seed<s>` (each stage skips when its finished output
matches), then results.csv, spectrum.json, figures and a report.md that sets the paper's claims beside the
measured numbers.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging

from nml_jax import (
    analyze,
    config_lib,
    files,
    nmtune,
    parallel,
    report,
    results,
    spectrum,
    transfer,
)


def run_config(config, noise_ratio: float, seed: int):
    """The nmtune config of one study cell: noise ratio and seed set everywhere they act."""
    cell = config.copy_and_resolve_references()
    with cell.unlocked():
        cell.stage = "nmtune"
        cell.seed = seed
        cell.pretrain.seed = seed
        cell.pretrain.noise.ratio = noise_ratio
        cell.pretrain.noise.seed = seed
        for method in cell.transfer:
            cell.transfer[method].seed = seed
        del cell["ratios"], cell["seeds"]
    return cell


def cell_dir(workdir: str, noise_ratio: float, seed: int) -> str:
    return os.path.join(workdir, "runs", f"noise{noise_ratio:g}_seed{seed}")


def validate(config) -> None:
    """Raises ConfigError naming the first invalid key of a study config (the cells' nmtune keys too)."""
    nmtune.validate(config)
    if not config.ratios:
        raise config_lib.ConfigError(
            "config.ratios is empty; expected noise ratios such as (0.0, 0.1)."
        )
    for r in config.ratios:
        config_lib.check_range("ratios[]", r, 0.0, 1.0, high_open=True)
    if not config.seeds:
        raise config_lib.ConfigError("config.seeds is empty; expected seeds such as (0, 1, 2).")


def run(config, workdir: str) -> dict[str, Any]:
    """Stage `study`: every (noise, seed) cell, then results.csv, spectrum.json, report.md and figures."""
    rows, spectra, per_run = [], {}, {}
    for seed in config.seeds:
        for ratio in config.ratios:
            logging.info("study cell: noise %g, seed %d", ratio, seed)
            cell, directory = (
                run_config(config, float(ratio), int(seed)),
                cell_dir(workdir, ratio, seed),
            )
            if parallel.is_main_process():
                config_lib.write_config(cell, directory)
            out = nmtune.run(cell, directory)
            rows += out["rows"]
            per_run[(float(ratio), int(seed))] = out["spectra"]
            spectra[(float(ratio), int(seed))] = analyze.mean_spectrum(out["spectra"])
    if parallel.is_main_process():
        write_study_outputs(config, workdir, rows, spectra, per_run)
    return {"rows": rows, "spectra": spectra}


def write_study_outputs(config, workdir, rows, spectra, per_run) -> None:
    figures = os.path.join(workdir, "figures")
    os.makedirs(figures, exist_ok=True)
    rows = results.write(os.path.join(workdir, transfer.RESULTS_FILE), rows)
    files.write_json(
        os.path.join(workdir, analyze.SPECTRUM_FILE),
        {f"noise{n:g}_seed{s}": sets for (n, s), sets in per_run.items()},
    )
    paths = []
    first_seed = min(s for _, s in per_run)
    for domain in sorted(next(iter(per_run.values()))):
        if per_run[next(iter(per_run))][domain]["kind"] != "id":
            continue
        path = os.path.join(figures, f"spectra_{domain}.png")
        spectrum.plot_spectra(
            {
                f"noise {n:g}": sets[domain]["singular_values"]
                for (n, s), sets in sorted(per_run.items())
                if s == first_seed
            },
            path,
            title=f"{domain} test features by pre-training noise (seed {first_seed})",
        )
        paths.append(path)
    path = os.path.join(figures, "accuracy_vs_noise.png")
    report.plot_accuracy_vs_noise(rows, path)
    paths.append(path)
    points = []
    id_lp = report.seed_means(rows, "id", "lp")
    for key, value in sorted(spectra.items()):
        if key in id_lp:
            points.append(
                {
                    "label": f"noise {key[0]:g}",
                    "sve": value["sve"],
                    "lsvr": value["lsvr"],
                    "accuracy": id_lp[key],
                }
            )
    path = os.path.join(figures, "spectrum_vs_accuracy.png")
    spectrum.plot_metric_vs_accuracy(points, path)
    paths.append(path)
    text = report.write(
        workdir, rows, spectra, config.title, [os.path.relpath(p, workdir) for p in paths]
    )
    print(text.split("## Every test set")[0])
    print(f"report: {os.path.join(workdir, report.REPORT_FILE)}")
