"""CLIP pre-training -> features -> transfer through `main.run`, as every process of a run executes it.

    python tests/two_process_stages.py WORKDIR OUT.npz

Run once as one process (all its devices) and once as each process of a `jax.distributed` run (NML_JAX_*
environment, see parallel.initialize): tests/test_multihost.py compares what process 0 saves in OUT.npz. The
downstream suite is a tiny one registered here (two tasks, 128 training images, 100-image tests that do not split
evenly over 4 devices), so the stages run in seconds.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import clip_pretrain as clip_config  # noqa: E402
from configs import probe as probe_config  # noqa: E402
from nml_jax import defaults, main, parallel, tasks  # noqa: E402

SUITE = "two_process"


def tiny_suite():
    digits = tasks.Domain("mnist5k", "nml_mnist5k", "train[:128]")
    return [
        tasks.id_task("fashion_mnist", "nml_fashion_mnist", "train[:128]", "test[:100]"),
        tasks.ood_task(
            "mnist5k_ood",
            digits,
            {
                "mnist5k": ("nml_mnist5k", "test[:100]"),
                "uci_digits": ("nml_uci_digits", "test[:100]"),
            },
        ),
    ]


def clip_stage():
    config = clip_config.get_config("smoke,noise=0.25")
    config.train_split = "train[:256]"
    config.zero_shot.split = "test[:200]"
    config.input.eval_batch_size = 100
    config.update(total_steps=6, ckpt_every_steps=4, log_every_steps=2)
    return config


def downstream_stage(stage, pretrained):
    config = probe_config.get_config("methods=nmtune")
    config.update(stage=stage, suite=SUITE, pretrained=pretrained)
    config.views.count = 2
    # Both training sets' heads in one program (many_heads.fit_many) across the processes.
    config.heads_per_program.nmtune = 2
    for method in config.methods:
        config.transfer[method].update(epochs=2, batch_size=32, eval_batch_size=64)
    return config


def flat(tree, prefix):
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def main_(workdir, out):
    tasks.SUITES[SUITE] = tiny_suite
    defaults.SUITES = (*defaults.SUITES, SUITE)
    parallel.initialize()  # A no-op unless NML_JAX_DISTRIBUTED=1.
    clip_dir = os.path.join(workdir, "clip")
    clip = main.run(clip_stage(), clip_dir)
    saved = flat(parallel.to_host(clip["state"].params), "clip/params")
    saved["clip/zero_shot_accuracy"] = np.float64(clip["summary"]["zero_shot_accuracy"])
    saved["clip/is_noisy"] = np.load(os.path.join(clip_dir, "noise.npz"))["is_noisy"]
    feats = main.run(downstream_stage("features", clip_dir), os.path.join(workdir, "features"))
    for t in feats["task_features"]:
        saved[f"features/{t.name}/train_views"] = t.train_views
        saved[f"features/{t.name}/train_labels"] = t.train_labels
        for domain, (f, y) in t.tests.items():
            saved[f"features/{t.name}/{domain}"] = f
            saved[f"features/{t.name}/{domain}/labels"] = y
    transfer = main.run(downstream_stage("transfer", clip_dir), os.path.join(workdir, "transfer"))
    for row in transfer["rows"]:
        saved[f"transfer/{row.task}/{row.test_domain}/{row.method}"] = np.float64(row.accuracy)
    if parallel.is_main_process():
        np.savez(out, **saved)


if __name__ == "__main__":
    main_(*sys.argv[1:])
