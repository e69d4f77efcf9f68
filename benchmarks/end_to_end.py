"""End-to-end wall time of the main job, `python -m nml_jax.main --config=configs/nmtune.py[:smoke]`.

Each config runs as a subprocess twice in the same fresh temporary workdir: `cold` (everything computed:
noise, pre-training, features, spectrum, LP/MLP/NMTune, report) and `warm` (a second start: every stage finds
its finished output and is skipped). The TFDS data directory is the usual one (already prepared) unless
`--fresh-data` points the cold run at an empty one, which adds building the embedded datasets.
`--openblas-threads=N` sets OPENBLAS_NUM_THREADS for the children (see benchmarks/transfer_throughput.py).

    python -m benchmarks.end_to_end [--quick] [--full] [--fresh-data] [--openblas-threads=1]

Default: the smoke config only (about a minute per run); `--full` adds the default main job (about ten
minutes on 2 CPU cores); `--quick` is the same as the default.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from benchmarks import common


def run_main(config: str, workdir: str, env: dict[str, str]) -> dict:
    """Runs the main job once; returns its wall time and exit status (and the log tail on failure)."""
    command = [sys.executable, "-m", "nml_jax.main", f"--config={config}", f"--workdir={workdir}"]
    start = time.perf_counter()
    child = subprocess.run(command, cwd=common.REPO, env=env, capture_output=True, text=True)
    result = {"wall_s": round(time.perf_counter() - start, 2), "returncode": child.returncode}
    if child.returncode:
        result["stderr_tail"] = child.stderr[-2000:]
    return result


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="also run the default (non-smoke) main job")
    p.add_argument("--fresh-data", action="store_true", help="cold run with an empty TFDS data dir")
    p.add_argument("--openblas-threads", default=None, help="OPENBLAS_NUM_THREADS for the runs")
    args = p.parse_args()
    machine = common.machine()
    env = dict(os.environ)
    if args.openblas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = args.openblas_threads
    configs = ["configs/nmtune.py:smoke"] + (["configs/nmtune.py"] if args.full else [])
    results = []
    for config in configs:
        with tempfile.TemporaryDirectory(prefix="nml_e2e_") as tmp:
            workdir = os.path.join(tmp, "workdir")
            cold_env = dict(env)
            if args.fresh_data:
                cold_env["NML_JAX_DATA_DIR"] = os.path.join(tmp, "tensorflow_datasets")
            for start, run_env in (("cold", cold_env), ("warm", cold_env)):
                common.log(f"{config} ({start})")
                results.append(
                    {
                        "config": config,
                        "start": start,
                        "fresh_data": args.fresh_data,
                        "openblas_threads": env.get("OPENBLAS_NUM_THREADS", "default"),
                        **run_main(config, workdir, run_env),
                    }
                )
    common.report("end_to_end", machine, results)


if __name__ == "__main__":
    main()
