"""Stages `features`, `analyze` and `transfer`: frozen features -> spectrum and LP/MLP/NMTune heads.

Features come from a pre-training workdir (`config.pretrained`, or the stage's own workdir) or from black-box
`.npz` files (`config.features_npz`). The tuning loop only sees cached features; the encoder runs once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any

import numpy as np
from absl import logging

from nml_jax import config_lib, data, features, parallel, report, results, spectrum, tasks, transfer

SPECTRUM_FILE = "spectrum.json"
RESULTS_FILE = "results.csv"
REPORT_FILE = "report.md"
CENTERINGS = ("row", "column", "none")


def suite(config) -> list[tasks.Task]:
    """The downstream tasks the config names (`config.suite`, with `config.train_limit` for the embedded one)."""
    config_lib.check_choice("suite", config.suite, sorted(tasks.SUITES))
    if config.suite == "embedded":
        return tasks.embedded_suite(config.get("train_limit"))
    return tasks.SUITES[config.suite]()


def encoder_source(config, workdir: str) -> str:
    """The pre-training workdir whose checkpoint is the encoder: `config.pretrained` or this workdir."""
    return config.get("pretrained") or workdir


def load_task_features(config, workdir: str) -> tuple[list[features.TaskFeatures], dict[str, Any]]:
    """Features of every task, and what identifies them (`noise_ratio`, `seed`, `source`) for results rows."""
    npz = config.get("features_npz")
    if npz:
        paths = [npz] if isinstance(npz, str) else list(npz)
        task_features = [t for path in paths for t in features.load_npz(path)]
        meta = {
            "noise_ratio": config.get("noise_ratio")
            if config.get("noise_ratio") is not None
            else math.nan,
            "seed": config.seed,
            "source": ",".join(paths),
        }
        return task_features, meta
    encoder = features.restore_encoder(encoder_source(config, workdir))
    cache_dir = config.get("feature_cache_dir") or os.path.join(
        encoder_source(config, workdir), "features"
    )
    view_spec = config.views.to_dict()
    num_views = view_spec.pop("count")
    task_features = []
    for task in suite(config):
        task_features.append(
            features.task_features(
                encoder,
                task,
                data.num_classes(task.train.dataset, data_dir=config.get("data_dir")),
                cache_dir=cache_dir,
                data_dir=config.get("data_dir"),
                chunk_size=config.feature_chunk_size,
                views=num_views,
                view_spec=view_spec,
            )
        )
    meta = {
        "noise_ratio": float(encoder.config.noise.ratio),
        "seed": int(encoder.config.seed),
        "source": encoder.fingerprint,
    }
    return task_features, meta


def spectra_of(
    task_features: list[features.TaskFeatures], centering: str
) -> dict[str, dict[str, Any]]:
    """Spectrum summary of every test set (each once, however many tasks share it)."""
    config_lib.check_choice("centering", centering, CENTERINGS)
    out = {}
    for t in task_features:
        for domain, (feats, _) in t.tests.items():
            if domain not in out:
                source = t.test_sources.get(domain, domain)
                out[domain] = {
                    "kind": t.kind,
                    "source": source,
                    **spectrum.summary(feats, centering=centering),
                }
    return out


def mean_spectrum(spectra: dict[str, dict[str, Any]], kind: str = "id") -> dict[str, float]:
    """SVE and LSVR averaged over the test sets of `kind` (ID by default, as the report uses)."""
    chosen = [s for s in spectra.values() if s["kind"] == kind] or list(spectra.values())
    return {m: float(np.mean([s[m] for s in chosen])) for m in ("sve", "lsvr")}


def _same_training_set(a: features.TaskFeatures, b: features.TaskFeatures) -> bool:
    return (
        a.train_domain == b.train_domain
        and a.num_classes == b.num_classes
        and np.array_equal(a.train_labels, b.train_labels)
        and np.array_equal(a.train_views, b.train_views)
    )


def transfer_rows(
    task_features: list[features.TaskFeatures],
    methods,
    method_configs,
    meta: dict[str, Any],
    mesh=None,
) -> list[results.Row]:
    """Fits every method once per training set and scores it on every test set of the tasks trained on it.

    An ID task and an OOD task with the same source (e.g. MNIST-5k) share one head per method.
    """
    rows = []
    fitted: list[tuple[features.TaskFeatures, str, transfer.TrainedHead]] = []
    for t in task_features:
        for method in methods:
            start = time.time()
            head = next((h for f, m, h in fitted if m == method and _same_training_set(f, t)), None)
            if head is None:
                head = transfer.fit(
                    method,
                    t.train_views,
                    t.train_labels,
                    method_configs[method],
                    num_classes=t.num_classes,
                    mesh=mesh,
                )
                fitted.append((t, method, head))
            scores = {d: transfer.accuracy(head, f, y) for d, (f, y) in t.tests.items()}
            rows += [
                results.Row(
                    t.name,
                    t.kind,
                    t.train_domain,
                    domain,
                    method,
                    float(meta["noise_ratio"]),
                    int(meta["seed"]),
                    float(acc),
                )
                for domain, acc in scores.items()
            ]
            logging.info(
                "%s %s: %s in %.1fs",
                t.name,
                method,
                {d: round(a, 4) for d, a in scores.items()},
                time.time() - start,
            )
    return rows


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def write_spectrum(
    workdir: str, spectra: dict[str, dict[str, Any]], meta: dict[str, Any], centering: str
) -> None:
    """`<workdir>/spectrum.json` and `<workdir>/figures/spectrum.png` (process 0 only)."""
    if not parallel.is_main_process():
        return
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    _write_json(
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
    spectrum.plot_spectra(
        {
            f"{name} (SVE {s['sve']:.2f}, LSVR {s['lsvr']:.2f})": s["singular_values"]
            for name, s in id_sets.items()
        },
        os.path.join(workdir, "figures", "spectrum.png"),
        title="Singular values of the ID test features",
    )


def fingerprint(config, meta: dict[str, Any]) -> str:
    """What decides the transfer results: the features' source and every method's settings."""
    blob = json.dumps(
        {
            "source": meta["source"],
            "methods": list(config.methods),
            "transfer": config.transfer.to_dict(),
            "suite": config.get("suite"),
            "train_limit": config.get("train_limit"),
            "views": config.views.to_dict(),
        },
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate(config, workdir: str) -> dict[str, Any]:
    """Features -> spectrum.json -> LP/MLP/NMTune -> results.csv -> report.md, skipping a finished identical run.

    Returns the rows, spectra and the metadata of the features.
    """
    task_features, meta = load_task_features(config, workdir)
    done_path = os.path.join(workdir, "transfer_done.json")
    key = fingerprint(config, meta)
    spectra = spectra_of(task_features, config.centering)
    write_spectrum(workdir, spectra, meta, config.centering)
    if _read_json(done_path).get("key") == key:
        logging.info("Transfer results for %s are up to date; reading them.", key)
        rows = results.read(os.path.join(workdir, RESULTS_FILE))
    else:
        rows = transfer_rows(task_features, config.methods, config.transfer, meta)
        if parallel.is_main_process():
            rows = results.write(os.path.join(workdir, RESULTS_FILE), rows)
            _write_json(done_path, {"key": key})
    if parallel.is_main_process():
        figures = ["figures/spectrum.png"]
        method = config.methods[0] if config.methods else None
        # Each test set's SVE and LSVR against the accuracy of the first method on it.
        points = [
            {
                "label": r.test_domain,
                "sve": spectra[r.test_domain]["sve"],
                "lsvr": spectra[r.test_domain]["lsvr"],
                "accuracy": r.accuracy,
            }
            for r in rows
            if r.method == method and r.test_domain in spectra
        ]
        if points:
            spectrum.plot_metric_vs_accuracy(
                points, os.path.join(workdir, "figures", "spectrum_vs_accuracy.png")
            )
            figures.append("figures/spectrum_vs_accuracy.png")
        spectra_by_run = {(meta["noise_ratio"], meta["seed"]): mean_spectrum(spectra)}
        text = report.markdown(
            rows,
            spectra_by_run,
            config.get("title", "nml-jax transfer report"),
            figures=figures,
        )
        with open(os.path.join(workdir, REPORT_FILE), "w") as f:
            f.write(text)
    return {"rows": rows, "spectra": spectra, "meta": meta}


def run_features(config, workdir: str) -> dict[str, Any]:
    """Stage `features`: extract (or find cached) features for every task of the suite."""
    task_features, meta = load_task_features(config, workdir)
    for t in task_features:
        shapes = {d: f.shape for d, (f, _) in t.tests.items()}
        print(f"{t.name}: train views {t.train_views.shape}, tests {shapes}")
    return {"task_features": task_features, "meta": meta}


def run_analyze(config, workdir: str) -> dict[str, Any]:
    """Stage `analyze`: spectrum.json and its figure."""
    task_features, meta = load_task_features(config, workdir)
    spectra = spectra_of(task_features, config.centering)
    write_spectrum(workdir, spectra, meta, config.centering)
    for name, s in spectra.items():
        print(
            f"{name:32s} SVE {s['sve']:.4f}  LSVR {s['lsvr']:.4f}  (n={s['count']}, d={s['dim']})"
        )
    return {"spectra": spectra, "meta": meta}


def run_transfer(config, workdir: str) -> dict[str, Any]:
    """Stage `transfer`: the methods in `config.methods` on every task; results.csv, spectrum.json, report.md."""
    for method in config.methods:
        config_lib.check_choice("methods", method, transfer.METHODS)
        transfer.check_config(method, config.transfer[method])
    out = evaluate(config, workdir)
    print(report.domain_table(out["rows"]))
    return out


def default_config(methods=("lp",), suite_name: str = "embedded"):
    """The settings shared by the probe, nmtune and study configs (configs/* start from these)."""
    import ml_collections
    from ml_collections import config_dict

    config = ml_collections.ConfigDict()
    config.stage = "transfer"
    config.pretrained = config_dict.placeholder(str)  # A pretrain workdir; None = this workdir.
    config.features_npz = config_dict.placeholder(str)  # Black-box features instead of an encoder.
    config.noise_ratio = config_dict.placeholder(
        float
    )  # Recorded in results.csv for .npz features.
    config.seed = 0
    config.suite = suite_name
    config.train_limit = config_dict.placeholder(int)
    config.data_dir = config_dict.placeholder(str)
    config.feature_cache_dir = config_dict.placeholder(str)
    config.feature_chunk_size = 4096  # Images handed to the encoder at a time.
    config.views = ml_collections.ConfigDict({"count": 0, "max_shift": 2, "flip": False, "seed": 0})
    config.centering = "row"
    config.methods = tuple(methods)
    config.transfer = ml_collections.ConfigDict(
        {m: transfer.default_config(m) for m in transfer.METHODS}
    )
    config.title = "nml-jax transfer report"
    return config
