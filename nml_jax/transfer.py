"""Stage `transfer`: LP, MLP and NMTune heads on the frozen features of every ID and OOD task.

Features come from features.load_task_features (an encoder's cached features, or black-box .npz files); each
method is fitted once per training set (tuning.fit) and scored on every test set of the tasks trained on it.
Writes results.csv (the workdir contract), spectrum.json (analyze) and report.md; a finished run whose
fingerprint matches is read back instead of trained again, and one made under other settings is never replaced
unless `config.overwrite` (then it is moved aside, see workdir.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np
from absl import logging

from nml_jax import (
    analyze,
    config_lib,
    defaults,
    features,
    files,
    many_heads,
    parallel,
    report,
    results,
    spectrum,
    tuning,
)
from nml_jax import workdir as workdir_lib

RESULTS_FILE = "results.csv"
DONE_FILE = "transfer_done.json"
# Everything a transfer run writes, moved aside together when it is redone under other settings.
OUTPUTS = (
    RESULTS_FILE,
    DONE_FILE,
    report.REPORT_FILE,
    report.CLAIMS_FILE,
    analyze.SPECTRUM_FILE,
    "figures",
)


def validate(config) -> None:
    """Raises ConfigError naming the first invalid key: features, centering, methods and every method block."""
    analyze.validate(config)
    if not config.methods:
        raise config_lib.ConfigError(
            f"config.methods is empty; expected some of {defaults.METHODS}."
        )
    for method in config.methods:
        config_lib.check_choice("methods", method, defaults.METHODS)
    for method in defaults.METHODS:
        with config_lib.nested(f"transfer.{method}"):
            tuning.validate(method, config.transfer[method])
    for method, limit in dict(config.get("heads_per_program") or {}).items():
        config_lib.check_choice("heads_per_program", method, defaults.METHODS)
        config_lib.check_positive_int(f"heads_per_program.{method}", limit)


def _same_training_set(a: features.TaskFeatures, b: features.TaskFeatures) -> bool:
    return (
        a.train_domain == b.train_domain
        and a.num_classes == b.num_classes
        and np.array_equal(a.train_labels, b.train_labels)
        and np.array_equal(a.train_views, b.train_views)
    )


def _fit_group(method: str, group: list[features.TaskFeatures], config, mesh) -> list:
    """The `method` heads of `group`'s training sets: `tuning.fit` for a single one, else one
    `many_heads.fit_many` program."""
    start = time.time()
    if len(group) == 1:
        t = group[0]
        heads = [
            tuning.fit(
                method,
                t.train_views,
                t.train_labels,
                config,
                num_classes=t.num_classes,
                mesh=mesh,
                online=t.online,
            )
        ]
    else:
        heads = many_heads.fit_many(
            method,
            [
                many_heads.HeadData(t.train_views, t.train_labels, t.num_classes, config.seed)
                for t in group
            ],
            config,
            mesh=mesh,
        )
    logging.info(
        "%s on %s: %d head(s) in one program, %.1fs",
        method,
        [t.train_domain for t in group],
        len(group),
        time.time() - start,
    )
    return heads


def head_groups(
    method: str, training_sets: list[features.TaskFeatures], heads_per_program: int
) -> list[list[int]]:
    """Indices of `training_sets` in groups trained in one program: online views alone, the rest by feature
    dimension and number of views (LP: the plain features only), largest N first, at most `heads_per_program`
    per group, so that similar sizes share the padding."""
    groups, shareable = [], {}
    for i, t in enumerate(training_sets):
        if t.online is not None or heads_per_program == 1:
            groups.append([i])
            continue
        num_views = 1 if method == "lp" else t.train_views.shape[0]
        shareable.setdefault((num_views, t.train_views.shape[2]), []).append(i)
    for members in shareable.values():
        members = sorted(members, key=lambda i: -training_sets[i].train_views.shape[1])
        groups += [
            members[k : k + heads_per_program] for k in range(0, len(members), heads_per_program)
        ]
    return groups


def fit_heads(
    task_features: list[features.TaskFeatures],
    methods,
    method_configs,
    mesh=None,
    heads_per_program=None,
) -> dict[tuple[int, str], tuning.TrainedHead]:
    """One head per method and distinct training set, keyed by (task index, method) for every task.

    An ID task and an OOD task with the same source (e.g. MNIST-5k) share one head per method. Heads of one
    method whose features share D (and V) are trained up to `heads_per_program[method]` at a time in one
    program (`many_heads.fit_many`; default `defaults.HEADS_PER_PROGRAM`), each as `tuning.fit` trains it.
    """
    limits = {**defaults.HEADS_PER_PROGRAM, **dict(heads_per_program or {})}
    out = {}
    for method in methods:
        owners: list[int] = []  # The first task of each distinct training set.
        for i, t in enumerate(task_features):
            if not any(_same_training_set(task_features[j], t) for j in owners):
                owners.append(i)
        training_sets = [task_features[i] for i in owners]
        trained = {}
        for group in head_groups(method, training_sets, limits[method]):
            heads = _fit_group(
                method, [training_sets[i] for i in group], method_configs[method], mesh
            )
            trained.update({owners[i]: head for i, head in zip(group, heads)})
        for i, t in enumerate(task_features):
            owner = next(j for j in owners if _same_training_set(task_features[j], t))
            out[(i, method)] = trained[owner]
    return out


def transfer_rows(
    task_features: list[features.TaskFeatures],
    methods,
    method_configs,
    meta: dict[str, Any],
    mesh=None,
    heads_per_program=None,
) -> list[results.Row]:
    """Fits every method once per training set (`fit_heads`) and scores it on every test set of the tasks
    trained on it; rows in task order, then method order."""
    heads = fit_heads(task_features, methods, method_configs, mesh, heads_per_program)
    rows = []
    for i, t in enumerate(task_features):
        for method in methods:
            head = heads[(i, method)]
            scores = {
                d: tuning.accuracy(head, f, y, t.test_classes.get(d))
                for d, (f, y) in t.tests.items()
            }
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
            logging.info("%s %s: %s", t.name, method, {d: round(a, 4) for d, a in scores.items()})
    return rows


def settings(config, meta: dict[str, Any]) -> dict[str, Any]:
    """What decides the transfer results: the features' source and every method's settings (JSON values)."""
    as_dict = {
        "source": meta["source"],
        "methods": list(config.methods),
        "transfer": config.transfer.to_dict(),
        "suite": config.get("suite"),
        "train_limit": config.get("train_limit"),
        "views": config.views.to_dict(),
    }
    return json.loads(json.dumps(as_dict, sort_keys=True, default=repr))


def fingerprint(config, meta: dict[str, Any]) -> str:
    """A short hash of `settings(config, meta)`."""
    blob = json.dumps(settings(config, meta), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _spectrum_figure(workdir: str, rows, spectra, method: str) -> list[str]:
    """Each test set's SVE and LSVR against the accuracy of `method` on it; returns the figure's path."""
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
    if not points:
        return []
    spectrum.plot_metric_vs_accuracy(
        points, os.path.join(workdir, "figures", "spectrum_vs_accuracy.png")
    )
    return ["figures/spectrum_vs_accuracy.png"]


def report_context(task_features: list[features.TaskFeatures], meta: dict[str, Any]) -> dict:
    """What the report needs beyond the rows: every test set's number of classes (its chance level), and the
    test sets that hold the pre-training data (left out of the ID claims)."""
    own = meta.get("pretrain_dataset")
    return {
        "chance": {d: t.num_classes for t in task_features for d in t.tests},
        "pretrain_domains": sorted(
            d
            for t in task_features
            for d, source in t.test_sources.items()
            if own and source.split("[")[0] == own
        ),
    }


def evaluate(config, workdir: str) -> dict[str, Any]:
    """Features -> spectrum.json -> LP/MLP/NMTune -> results.csv -> report.md, skipping a finished identical run.

    Returns the rows, spectra, the metadata of the features and the report context (report_context).
    """
    task_features, meta = features.load_task_features(config, workdir)
    done_path = os.path.join(workdir, DONE_FILE)
    key = fingerprint(config, meta)
    done = files.read_json(done_path) or {}
    if done and done.get("key") != key:
        old, new = done.get("settings"), settings(config, meta)
        if old is None:  # Written before the settings were stored.
            old, new = {"fingerprint": done.get("key")}, {"fingerprint": key}
        workdir_lib.check_fingerprint(
            workdir, "transfer results", old, new, OUTPUTS, bool(config.get("overwrite", False))
        )
    spectra = analyze.spectra_of(task_features, config.centering)
    analyze.write_spectrum(workdir, spectra, meta, config.centering)
    if done.get("key") == key:
        logging.info("Transfer results for %s are up to date; reading them.", key)
        rows = results.read(os.path.join(workdir, RESULTS_FILE))
    else:
        rows = transfer_rows(
            task_features,
            config.methods,
            config.transfer,
            meta,
            heads_per_program=config.get("heads_per_program"),
        )
        if parallel.is_main_process():
            rows = results.write(os.path.join(workdir, RESULTS_FILE), rows)
            files.write_json(done_path, {"key": key, "settings": settings(config, meta)})
    context = report_context(task_features, meta)
    if parallel.is_main_process():
        figures = ["figures/spectrum.png"]
        if config.methods:
            figures += _spectrum_figure(workdir, rows, spectra, config.methods[0])
        mean = analyze.mean_spectrum(spectra, exclude=context["pretrain_domains"])
        report.write(
            workdir,
            rows,
            {(meta["noise_ratio"], meta["seed"]): mean},
            config.title,
            figures,
            **context,
        )
    return {"rows": rows, "spectra": spectra, "meta": meta, "context": context}


def run(config, workdir: str) -> dict[str, Any]:
    """Stage `transfer`: the methods in `config.methods` on every task; results.csv, spectrum.json, report.md."""
    out = evaluate(config, workdir)
    print(report.domain_table(out["rows"]))
    return out
