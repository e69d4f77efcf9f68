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
        cell.views.seed = seed
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
    rows, per_run, context = [], {}, {}
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
            context = out["context"]  # The same suite in every cell.
    spectra = {
        run: analyze.mean_spectrum(sets, exclude=context["pretrain_domains"])
        for run, sets in per_run.items()
    }
    if parallel.is_main_process():
        write_study_outputs(config, workdir, rows, spectra, per_run, context)
    return {"rows": rows, "spectra": spectra}


def write_study_outputs(config, workdir, rows, spectra, per_run, context) -> None:
    """results.csv, spectrum.json, the spectra of every ID test set by noise level, and the report."""
    rows = results.write(os.path.join(workdir, transfer.RESULTS_FILE), rows)
    files.write_json(
        os.path.join(workdir, analyze.SPECTRUM_FILE),
        {f"noise{n:g}_seed{s}": sets for (n, s), sets in per_run.items()},
    )
    files.makedirs(os.path.join(workdir, "figures"))
    paths = []
    first_seed = min(s for _, s in per_run)
    first = per_run[min(per_run)]
    for domain in sorted(d for d, sets in first.items() if sets["kind"] == "id"):
        paths.append(f"figures/spectra_{domain}.png")
        spectrum.plot_spectra(
            {
                f"noise {n:g}": sets[domain]["singular_values"]
                for (n, s), sets in sorted(per_run.items())
                if s == first_seed
            },
            os.path.join(workdir, paths[-1]),
            title=f"{domain} test features by pre-training noise (seed {first_seed})",
        )
    text = report.write_runs(workdir, rows, spectra, config.title, paths, **context)
    print(text.split("## Every test set")[0])
    print(f"report: {os.path.join(workdir, report.REPORT_FILE)}")
