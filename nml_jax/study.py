"""Stages `nmtune` (the main job, one noise level) and `study` (noise ratios x seeds) and their reports.

nmtune: noise -> pre-training (or the checkpoint already in the workdir) -> features -> spectrum -> LP, MLP and
NMTune on the ID and OOD suite -> results.csv, spectrum.json, report.md, figures.
study: nmtune for every (noise ratio, seed) in its own sub-workdir (each stage skips when its finished output
matches), then one report that sets the paper's claims beside the measured numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging

from nml_jax import config_lib, downstream, parallel, report, results, spectrum


def run_nmtune(config, workdir: str) -> dict[str, Any]:
    """Stage `nmtune`: the whole pipeline at one noise level in `workdir`."""
    if config.get("features_npz"):
        # Black-box features replace pre-training and the encoder; the default title would name the embedded study.
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.title = f"LP, MLP and NMTune on the features in {config.features_npz}"
    elif not config.get("pretrained"):
        from nml_jax import pretrain

        pretrain.run(config.pretrain, workdir)
    out = downstream.evaluate(config, workdir)
    print(report.markdown(out["rows"], {}, config.title).split("## Every test set")[0])
    return out


def run_nmtune_text(config, workdir: str) -> dict[str, Any]:
    """Stage `nmtune_text`: MiniLM sentence features of the text domains (embedded once, cached), then LP, MLP
    and NMTune on them exactly as on any black-box features."""
    from nml_jax import text_features

    text = config.text
    path = os.path.join(workdir, f"{text.source}.npz")
    text_features.build_text_task_npz(
        path,
        source=text.source,
        targets=tuple(text.targets),
        cache_dir=os.path.join(workdir, "features"),
        max_len=text.max_len,
        limit=text.get("limit"),
        batch_size=text.batch_size,
    )
    cell = config.copy_and_resolve_references()
    with cell.unlocked():
        cell.features_npz = path
    out = downstream.evaluate(cell, workdir)
    print(report.domain_table(out["rows"]))
    return out


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


def check_study(config) -> None:
    if not config.ratios:
        raise config_lib.ConfigError(
            "config.ratios is empty; expected noise ratios such as (0.0, 0.1)."
        )
    for r in config.ratios:
        config_lib.check_range("ratios[]", r, 0.0, 1.0, high_open=True)
    if not config.seeds:
        raise config_lib.ConfigError("config.seeds is empty; expected seeds such as (0, 1, 2).")


def run_study(config, workdir: str) -> dict[str, Any]:
    """Stage `study`: every (noise, seed) cell, then results.csv, spectrum.json, report.md and figures."""
    check_study(config)
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
            out = run_nmtune(cell, directory)
            rows += out["rows"]
            per_run[(float(ratio), int(seed))] = out["spectra"]
            spectra[(float(ratio), int(seed))] = downstream.mean_spectrum(out["spectra"])
    if parallel.is_main_process():
        write_study_outputs(config, workdir, rows, spectra, per_run)
    return {"rows": rows, "spectra": spectra}


def write_study_outputs(config, workdir, rows, spectra, per_run) -> None:
    figures = os.path.join(workdir, "figures")
    os.makedirs(figures, exist_ok=True)
    rows = results.write(os.path.join(workdir, downstream.RESULTS_FILE), rows)
    with open(os.path.join(workdir, downstream.SPECTRUM_FILE), "w") as f:
        json.dump({f"noise{n:g}_seed{s}": sets for (n, s), sets in per_run.items()}, f, indent=1)
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
    text = report.markdown(
        rows, spectra, config.title, figures=[os.path.relpath(p, workdir) for p in paths]
    )
    with open(os.path.join(workdir, downstream.REPORT_FILE), "w") as f:
        f.write(text)
    print(text.split("## Every test set")[0])
    print(f"report: {os.path.join(workdir, downstream.REPORT_FILE)}")
