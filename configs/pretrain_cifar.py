"""Noisy pre-training of a small-stem ResNet-18 on CIFAR-10 or CIFAR-100 (TFDS `cifar10`/`cifar100`).

The data must be prepared in a TFDS data_dir first (no download at run time). Standard recipe: batch 128,
SGD momentum 0.9, lr 0.1, 200 epochs cosine, weight decay 5e-4, random crop + flip.

    python -m nml_jax.main --config=configs/pretrain_cifar.py:noise=0.1 --workdir=workdirs/c10_n10
    python -m nml_jax.main --config=configs/pretrain_cifar.py:dataset=cifar100,noise=0.2 \
        --workdir=workdirs/c100_n20
"""

from nml_jax import config_lib, defaults

# Per-channel mean and std of the CIFAR-10 train split (used for both CIFAR sets).
NORMALIZE = "normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))"


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, noise=0.0, kind="symmetric", seed=0, dataset="cifar10", epochs=200.0, smoke=False
    )
    config_lib.check_choice("dataset", arg.dataset, ["cifar10", "cifar100"])
    config = defaults.pretrain()
    config.dataset = arg.dataset
    config.noise = defaults.noise_block(arg.kind, arg.noise, arg.seed)
    config.seed = arg.seed
    config.model = {"name": "resnet18", "stem": "small", "dtype": "float32"}
    config.input.batch_size = 128
    config.input.eval_batch_size = 1000
    config.input.pp_train = f"to_float|random_crop(32, 4)|flip_lr|{NORMALIZE}"
    config.input.pp_eval = f"to_float|{NORMALIZE}"
    config.total_epochs = arg.epochs
    config.optimizer.lr = 0.1
    config.optimizer.weight_decay = 5e-4
    config.log_every_steps = 100
    config.ckpt_every_steps = 1000
    config.eval_every_steps = 3910  # About every 10 epochs at batch 128.
    if arg.smoke:
        config.model.width = 8
        config.train_examples = 256
        config.total_epochs = None
        config.total_steps = 2
        config.input.batch_size = 32
        config.input.eval_batch_size = 64
    return config
