"""Contrastive (CLIP) pre-training on noisy image-text pairs, embedded default (offline, 2 CPU cores).

Fashion-MNIST train images paired with SYNTHETIC captions (templates x class synonyms, see
nml_jax/data/captions.py); round(r * N) pairs get each other's captions (caption swap, `noise=`). A small CNN
image tower and a 2-layer text transformer (64-d shared embedding) train with the symmetric InfoNCE loss for
2 epochs; zero-shot accuracy on the Fashion-MNIST test split is logged and returned. A few minutes on 2 cores.

    python -m nml_jax.main --config=configs/clip_pretrain.py --workdir=workdirs/clip_n0
    python -m nml_jax.main --config=configs/clip_pretrain.py:noise=0.2,seed=1 --workdir=workdirs/clip_n20_s1
    python -m nml_jax.main --config=configs/clip_pretrain.py:smoke --workdir=/tmp/clip_smoke
Its image features then go through the downstream stages like a supervised checkpoint's:
    python -m nml_jax.main --config=configs/probe.py --workdir=workdirs/clip_n0_probe \
        --config.pretrained=workdirs/clip_n0

Variants: noise (caption-swap ratio), seed (noise, parameters and batch order), size (a key of
nml_jax.defaults.CLIP_SIZES), epochs, batch, lr, examples (first N train pairs; 0 = all 60,000), bf16 (mixed
precision), smoke (tiny model, 512 pairs, 8 steps).
"""

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        noise=0.0,
        seed=0,
        size="small",
        epochs=2.0,
        batch=128,
        lr=1e-3,
        examples=0,
        bf16=False,
        smoke=False,
    )
    config = defaults.clip_pretrain()
    config.noise = defaults.noise_block("caption_swap", arg.noise, arg.seed)
    config.seed = arg.seed
    config.model = defaults.clip_model(arg.size, "bfloat16" if arg.bf16 else "float32")
    config.total_epochs = arg.epochs
    config.input.batch_size = arg.batch
    config.optimizer.lr = arg.lr
    if arg.examples:
        config.train_split = f"train[:{arg.examples}]"
    if arg.smoke:
        config.model = defaults.clip_model("tiny", config.model.dtype)
        config.train_split = "train[:512]"
        config.total_epochs = None
        config.total_steps = 8
        config.warmup_epochs = 0.0
        config.input.batch_size = 64
        config.input.eval_batch_size = 1000
        config.log_every_steps = 4
        config.ckpt_every_steps = 4
    return config
