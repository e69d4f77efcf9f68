"""The K study (README "NMTune as implemented"): the view bank with K in {2, 4, 8} against the online mode.

Every cell is the main job, `configs/nmtune.py:noise=<r>,seed=<s>,views=<mode>,k=<K>`, run as a subprocess in
its own workdir from one pre-trained encoder per seed (`--pretrained`, a directory template with `{seed}`
and `{noise}`, e.g. the study's cells) and with its own feature cache, so each cell's wall time counts all of
its feature passes (plain features, the bank's K views) and its heads. A finished cell (its `cell.json`) is not
run again, so the study can be grown seed by seed; the JSON summary covers every requested cell.

Per seed, a cell's ID number is the mean accuracy over the ID test sets except the pre-training set's own
(report.PRETRAIN_DOMAINS) and its OOD number the mean over every OOD test set; the summary gives, per mode and
method, the mean and standard deviation over seeds, and for each bank K whether its MLP and NMTune means lie
within one standard deviation of the online mode's on both ID and OOD (the rule the default K is chosen by).

    python -m benchmarks.views_k --out=workdirs/views_k \
        --pretrained='workdirs/study/runs/noise{noise:g}_seed{seed}' [--seeds=0,1,2] [--ks=2,4,8] [--quick]

`--quick`: the first seed and the first K only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import common
from nml_jax import files, report, results

METHODS = ("lp", "mlp", "nmtune")
VIEW_METHODS = ("mlp", "nmtune")


def cell_modes(ks: list[int]) -> list[tuple[str, int]]:
    return [("online", 0)] + [("bank", k) for k in ks]


def mode_name(mode: str, k: int) -> str:
    return mode if mode == "online" else f"bank{k}"


def run_cell(out: str, pretrained: str, noise: float, seed: int, mode: str, k: int) -> dict:
    """Runs one cell unless its cell.json exists; returns {wall_s, id, ood} (accuracy points per method)."""
    workdir = os.path.join(out, f"{mode_name(mode, k)}_seed{seed}")
    done = os.path.join(workdir, "cell.json")
    if os.path.exists(done):
        return files.read_json(done)
    if not os.path.exists(os.path.join(pretrained, "model.json")):
        raise SystemExit(f"--pretrained: {pretrained} holds no finished pre-training (model.json).")
    arg = f"noise={noise:g},seed={seed},views={mode}" + (f",k={k}" if mode == "bank" else "")
    command = [
        sys.executable,
        "-m",
        "nml_jax.main",
        f"--config=configs/nmtune.py:{arg}",
        f"--workdir={workdir}",
        f"--config.pretrained={pretrained}",
        f"--config.feature_cache_dir={os.path.join(workdir, 'features')}",
    ]
    common.log(" ".join(command[2:]))
    start = time.perf_counter()
    child = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(f"cell {workdir} failed:\n{child.stderr[-3000:]}")
    rows = results.read(os.path.join(workdir, "results.csv"))
    cell = {"wall_s": round(wall, 1), **headline(rows)}
    files.write_json(done, cell)
    return cell


def headline(rows: list[results.Row]) -> dict[str, dict[str, float]]:
    """{"id"|"ood": {method: mean accuracy in points}}, ID without the pre-training set's own test set."""
    out: dict[str, dict[str, float]] = {"id": {}, "ood": {}}
    for kind in out:
        for method in METHODS:
            accs = [
                100 * r.accuracy
                for r in rows
                if r.kind == kind
                and r.method == method
                and not (kind == "id" and r.test_domain in report.PRETRAIN_DOMAINS)
            ]
            out[kind][method] = float(np.mean(accs))
    return out


def summarise(cells: dict[tuple[str, int], list[dict]]) -> dict:
    """Mean and std over seeds per mode and method, and the one-standard-deviation rule for each bank K."""
    table = {}
    for name, per_seed in cells.items():
        entry = {"wall_s_mean": round(float(np.mean([c["wall_s"] for c in per_seed])), 1)}
        for kind in ("id", "ood"):
            for method in METHODS:
                values = np.array([c[kind][method] for c in per_seed])
                entry[f"{kind}_{method}"] = {
                    "mean": round(float(values.mean()), 2),
                    "std": round(float(values.std(ddof=1)), 2) if len(values) > 1 else None,
                    "per_seed": [round(float(v), 2) for v in values],
                }
        table[name] = entry
    online = table.get("online")
    for name, entry in table.items():
        if name == "online" or online is None or online["id_nmtune"]["std"] is None:
            continue
        entry["within_one_std_of_online"] = all(
            abs(entry[key]["mean"] - online[key]["mean"]) <= online[key]["std"]
            for key in (f"{kind}_{method}" for kind in ("id", "ood") for method in VIEW_METHODS)
        )
    return table


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory of the cells' workdirs")
    p.add_argument(
        "--pretrained", required=True, help="pre-training workdir template with {seed}, {noise}"
    )
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ks", default="2,4,8")
    args = p.parse_args()
    machine = common.machine()
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    ks = [int(k) for k in args.ks.split(",")][: 1 if args.quick else None]
    cells: dict[str, list[dict]] = {}
    for seed in seeds:
        pretrained = os.path.abspath(args.pretrained.format(seed=seed, noise=args.noise))
        for mode, k in cell_modes(ks):
            cell = run_cell(os.path.abspath(args.out), pretrained, args.noise, seed, mode, k)
            cells.setdefault(mode_name(mode, k), []).append(cell)
    common.report(
        "views_k",
        machine,
        [{"noise": args.noise, "seeds": seeds, "modes": summarise(cells)}],
    )


if __name__ == "__main__":
    main()
