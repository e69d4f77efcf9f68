"""configs/clip_yfcc15m.py (tiny CLIP) on TFRecord shards, as every process of a `jax.distributed` run executes it.

    python tests/two_process_clip_shards.py 'SHARDS_GLOB' WORKDIR OUT.json

tests/test_multihost.py runs it as both processes of a local run (NML_JAX_* environment), and again after
removing the last checkpoint: each process writes the logged losses and the zero-shot accuracy it saw.
"""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from nml_jax import config_lib, defaults, main, parallel  # noqa: E402


def main_(shards, workdir, out):
    parallel.initialize()  # A no-op unless NML_JAX_DISTRIBUTED=1.
    config = config_lib.load_config(os.path.join(REPO, "configs", "clip_yfcc15m.py:noise=0.2"))
    config.shards = shards
    config.update(total_steps=4, total_epochs=None, warmup_steps=0, ckpt_every_steps=2)
    config.log_every_steps = 1
    config.zero_shot.update(dataset="nml_fashion_mnist", split="test[:64]")
    config.input.update(batch_size=16, eval_batch_size=16, shuffle_buffer=16)
    config.input.pp_train = "decode(3)|value_range(0, 1)"
    config.input.pp_eval = "grey_to_rgb|value_range(0, 1)"
    config.model = defaults.clip_model("tiny")
    result = main.run(config, workdir)
    with open(out, "w") as f:
        json.dump(
            {
                "process": jax.process_index(),
                "losses": [r["train_loss"] for r in result["history"] if "train_loss" in r],
                "zero_shot": result["summary"]["zero_shot_accuracy"],
                "resumed_from": result["resumed_from"],
            },
            f,
        )


if __name__ == "__main__":
    main_(*sys.argv[1:])
