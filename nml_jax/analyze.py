"""Stage `analyze`: the singular-value spectrum (SVE, LSVR, top-k share) of every downstream test set.

The math lives in spectrum.py; this module picks the features (features.load_task_features) and writes
`<workdir>/spectrum.json` and `<workdir>/figures/spectrum.png`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nml_jax import config_lib, features, files, parallel, spectrum

SPECTRUM_FILE = "spectrum.json"


def validate(config) -> None:
    """Raises ConfigError naming the first invalid key of an analyze config."""
    features.validate(config)
    config_lib.check_choice("centering", config.centering, spectrum.CENTERINGS)


def spectra_of(
    task_features: list[features.TaskFeatures], centering: str
) -> dict[str, dict[str, Any]]:
    """Spectrum summary of every test set (each once, however many tasks share it)."""
    out = {}
    for t in task_features:
        for domain, (feats, _) in t.tests.items():
            if domain not in out:
                out[domain] = {
                    "kind": t.kind,
                    "source": t.test_sources.get(domain, domain),
                    **spectrum.summary(feats, centering=centering),
                }
    return out


def mean_spectrum(
    spectra: dict[str, dict[str, Any]], kind: str = "id", exclude=()
) -> dict[str, float]:
    """SVE and LSVR averaged over the test sets of `kind` (ID by default, as the report uses), except the
    sets named in `exclude` (the pre-training data's own test set)."""
    chosen = [s for name, s in spectra.items() if s["kind"] == kind and name not in exclude]
    chosen = chosen or list(spectra.values())
    return {m: float(np.mean([s[m] for s in chosen])) for m in ("sve", "lsvr")}


def write_spectrum(
    workdir: str, spectra: dict[str, dict[str, Any]], meta: dict[str, Any], centering: str
) -> None:
    """`<workdir>/spectrum.json` and `<workdir>/figures/spectrum.png` (process 0 only)."""
    if not parallel.is_main_process():
        return
    files.write_json(
        os.path.join(workdir, SPECTRUM_FILE),
        {
            "centering": centering,
            "source": meta["source"],
            "noise_ratio": meta["noise_ratio"],
            "seed": meta["seed"],
            "test_sets": spectra,
        },
    )
    # The ID test sets only: with every OOD set too the figure holds 16 lines and says nothing.
    id_sets = {name: s for name, s in spectra.items() if s["kind"] == "id"} or spectra
    files.makedirs(os.path.join(workdir, "figures"))
    spectrum.plot_spectra(
        {
            f"{name} (SVE {s['sve']:.2f}, LSVR {s['lsvr']:.2f})": s["singular_values"]
            for name, s in id_sets.items()
        },
        os.path.join(workdir, "figures", "spectrum.png"),
        title="Singular values of the ID test features",
    )


def run(config, workdir: str) -> dict[str, Any]:
    """Stage `analyze`: spectrum.json and its figure."""
    task_features, meta = features.load_task_features(config, workdir)
    spectra = spectra_of(task_features, config.centering)
    write_spectrum(workdir, spectra, meta, config.centering)
    for name, s in spectra.items():
        print(
            f"{name:32s} SVE {s['sve']:.4f}  LSVR {s['lsvr']:.4f}  (n={s['count']}, d={s['dim']})"
        )
    return {"spectra": spectra, "meta": meta}
