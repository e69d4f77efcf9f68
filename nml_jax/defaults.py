"""Default config blocks that every file in configs/ composes (in the style of big_vision's configs/common.py).

Light on purpose: it imports ml_collections and config_lib only, so loading a config never imports TensorFlow, JAX or a stage
module. Each function returns a fresh ConfigDict holding every field its consumer reads, with the embedded
default's values; configs override fields and compose blocks by calling these functions.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from nml_jax import config_lib

METHODS = ("lp", "mlp", "nmtune")  # Transfer heads, in report order.
NOISE_KINDS = ("none", "symmetric", "asymmetric", "matrix", "caption_swap")
# NMTune/MLP views: the plain features only, a cached bank of augmented views, or two drawn at every step.
VIEW_MODES = ("none", "bank", "online")
DEFAULT_VIEWS = 4  # K, the bank's augmented views per training example (README: the K study).
# Heads of one method the transfer stage trains in one program (many_heads.py); 1 = one by one. On 2 CPU cores
# the batched program pays off for LP only (benchmarks/heads.py; README "Performance").
HEADS_PER_PROGRAM = {"lp": 16, "mlp": 1, "nmtune": 1}
SUITES = ("embedded", "paper_id", "domainnet_real", "domainnet_sketch", "imagenet_ood")
FASHION_MNIST_PP = (
    "to_float|normalize(0.2860, 0.3530)"  # Mean and std of the Fashion-MNIST train pixels.
)

# CLIP sizes: the published ones (CLIP paper, Tables 19/20) and small ones for CPU runs and tests.
_TEXT_PAPER = dict(vocab_size=49408, context_length=77, width=512, depth=12, num_heads=8)
CLIP_SIZES = {
    "tiny": dict(
        embed_dim=32,
        image=dict(name="cnn", widths=(8, 16), feature_dim=32),
        text=dict(vocab_size=512, context_length=16, width=32, depth=1, num_heads=2),
    ),
    "small": dict(
        embed_dim=64,
        image=dict(name="cnn", widths=(32, 64), feature_dim=128),
        text=dict(vocab_size=1024, context_length=24, width=128, depth=2, num_heads=4),
    ),
    "rn50": dict(
        embed_dim=1024,
        image=dict(name="resnet50", width=64, stem="imagenet", num_heads=32),
        text=_TEXT_PAPER,
    ),
    "vit_b16": dict(
        embed_dim=512,
        image=dict(name="vit", patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072),
        text=_TEXT_PAPER,
    ),
}


def optional(field_type: type, value=None) -> config_dict.FieldReference:
    """A typed field that may be None and can still be set from the command line (`--config.key=value`)."""
    return config_dict.FieldReference(value, field_type=field_type)


def noise_block(
    kind: str = "symmetric", ratio: float = 0.0, seed: int = 0
) -> ml_collections.ConfigDict:
    """The `noise` block of the noise, pretrain, clip_pretrain and study configs.

    kind: one of NOISE_KINDS; ratio in [0, 1); seed picks the corrupted examples; pairs (class -> class map) for
    asymmetric; matrix (C x C row-stochastic) for matrix.
    """
    # Python literals on the command line: --config.noise.pairs='{0: 6, 6: 0}'.
    return ml_collections.ConfigDict(
        {
            "kind": kind,
            "ratio": ratio,
            "seed": seed,
            "pairs": optional(object),
            "matrix": optional(object),
        },
        type_safe=False,
    )


def optimizer_block(
    name: str, *, lr: float, weight_decay: float, b2: float = 0.999
) -> ml_collections.ConfigDict:
    """Every field `trainer.make_optimizer` reads."""
    return ml_collections.ConfigDict(
        {
            "name": name,
            "lr": lr,
            "momentum": 0.9,
            "nesterov": False,
            "b1": 0.9,
            "b2": b2,
            "weight_decay": weight_decay,
            "clip_norm": optional(float),
        }
    )


def training_block(config: ml_collections.ConfigDict) -> None:
    """Adds the fields the shared training loop reads (duration, cadence, devices, resume) to `config`."""
    config.total_epochs = optional(
        float, 2.0
    )  # Exactly one of total_epochs and total_steps is set.
    config.total_steps = optional(int)
    config.warmup_epochs = optional(float, 0.0)  # Or warmup_steps.
    config.warmup_steps = optional(int)
    config.log_every_steps = 100
    config.eval_every_steps = optional(int)  # None = only at the end.
    config.ckpt_every_steps = 500
    config.keep_checkpoints = 2
    config.fsdp = False
    config.num_devices = optional(int)  # None = all devices.
    config.init_from = optional(str)  # Another pre-training workdir whose params start this run.
    config.overwrite = False  # Move aside a model made here under another config (else: refuse).


def pretrain() -> ml_collections.ConfigDict:
    """Every field of a supervised pre-training config: the small CNN on noisy Fashion-MNIST."""
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.dataset = "nml_fashion_mnist"
    config.data_dir = optional(str)
    config.train_split = "train"
    config.test_split = "test"
    config.train_examples = optional(int)  # The first N training examples (None = all).
    config.noise = noise_block("symmetric", 0.0, 0)
    config.seed = 0  # Parameters, dropout and the order of the training batches.
    config.model = ml_collections.ConfigDict({"name": "cnn", "dtype": "float32"})
    config.input = ml_collections.ConfigDict()
    config.input.batch_size = 64
    config.input.eval_batch_size = 512
    config.input.stream = False  # Stream from TFDS (sets too big for memory) instead of loading.
    config.input.pp_train = FASHION_MNIST_PP
    config.input.pp_eval = FASHION_MNIST_PP
    training_block(config)
    config.optimizer = optimizer_block("sgd", lr=0.05, weight_decay=5e-4)
    config.label_smoothing = 0.0
    return config


def embedded_pretrain(
    *,
    noise: float = 0.0,
    kind: str = "symmetric",
    seed: int = 0,
    model: str = "cnn",
    epochs: float = 2.0,
    batch: int = 64,
    lr: float = 0.05,
    dataset: str = "nml_fashion_mnist",
    smoke: bool = False,
) -> ml_collections.ConfigDict:
    """The embedded default pre-training (configs/pretrain.py); `smoke` shrinks it to 512 examples, 8 steps."""
    config = pretrain()
    config.dataset = dataset
    config.noise = noise_block(kind, noise, seed)
    config.seed = seed
    config.model.name = model
    config.total_epochs = epochs
    config.input.batch_size = batch
    config.optimizer.lr = lr
    if smoke:
        config.train_examples = 512
        config.total_epochs = None
        config.total_steps = 8
        config.input.eval_batch_size = 256
        config.log_every_steps = 4
        config.ckpt_every_steps = 4
    return config


def clip_model(size: str, dtype: str = "float32") -> ml_collections.ConfigDict:
    """The CLIP model block of a named size (a key of CLIP_SIZES)."""
    config_lib.check_choice("model size", size, sorted(CLIP_SIZES))
    return ml_collections.ConfigDict({**CLIP_SIZES[size], "dtype": dtype})


def clip_pretrain() -> ml_collections.ConfigDict:
    """Every field of a contrastive pre-training config: the small CLIP on captioned Fashion-MNIST."""
    config = ml_collections.ConfigDict()
    config.stage = "clip_pretrain"
    config.dataset = "nml_fashion_mnist"  # An embedded image set, or 'tfrecord' with config.shards.
    config.data_dir = optional(str)
    config.train_split = "train"
    config.shards = optional(
        str
    )  # Glob of TFRecord shards (`jpg`, `txt`) when dataset == 'tfrecord'.
    config.caption_seed = 0  # Template and synonym draws of the synthetic captions.
    config.noise = noise_block("caption_swap", 0.0, 0)
    config.seed = 0
    config.model = clip_model("small")
    config.tokenizer_texts = optional(int)  # Train the BPE on the first N captions (None = all).
    config.input = ml_collections.ConfigDict()
    config.input.batch_size = 128
    config.input.eval_batch_size = 500
    config.input.pp_train = FASHION_MNIST_PP
    config.input.pp_eval = FASHION_MNIST_PP
    config.input.shuffle_buffer = 10_000  # Streamed shards: records per shuffle block (>= 1 shard).
    training_block(config)
    config.warmup_epochs = 0.1
    config.log_every_steps = 50
    config.optimizer = optimizer_block("adamw", lr=1e-3, weight_decay=0.1, b2=0.98)
    config.zero_shot = ml_collections.ConfigDict(
        {"dataset": "nml_fashion_mnist", "split": "test", "data_dir": optional(str)}
    )
    return config


def head(method: str) -> ml_collections.ConfigDict:
    """The official NMTune-code defaults of a transfer head: 'lp', 'mlp' or 'nmtune'."""
    config_lib.check_choice("method", method, METHODS)
    config = ml_collections.ConfigDict()
    config.optimizer = "adamw"
    config.lr = 1e-2 if method == "lp" else 1e-3
    config.weight_decay = 1e-4
    config.batch_size = 64
    config.epochs = 30
    config.seed = 0
    config.eval_batch_size = 1024
    if method != "lp":
        config.mlp_ratio = 4.0
        config.depth = 1
        config.residual = True
        config.scale_init = 1.0
    if method == "nmtune":
        config.consistency_weight = 1.0
        config.covariance_weight = 0.04
        config.svd_weight = 0.001
        config.svd_top_k = 5
    return config


def downstream(methods=("lp",), suite: str = "embedded") -> ml_collections.ConfigDict:
    """The settings of the features, analyze, transfer, nmtune and study stages."""
    config = ml_collections.ConfigDict()
    config.stage = "transfer"
    config.pretrained = config_dict.placeholder(str)  # A pre-training workdir; None = this workdir.
    config.features_npz = config_dict.placeholder(str)  # Black-box features instead of an encoder.
    config.noise_ratio = config_dict.placeholder(
        float
    )  # Recorded in results.csv for .npz features.
    config.seed = 0
    config.suite = suite
    config.train_limit = config_dict.placeholder(int)
    config.data_dir = config_dict.placeholder(str)
    config.feature_cache_dir = config_dict.placeholder(str)
    config.feature_chunk_size = 4096  # Embedded-set images handed to the encoder at a time.
    # Images per global batch when a TFDS split is streamed through the encoder (rounded up to the devices).
    config.feature_batch_size = 256
    # The augmented views NMTune and MLP train on (augment.py): `bank` caches `count` views per training example,
    # `online` draws two fresh ones per step through the encoder, `none` uses the plain features for both.
    mode = "bank" if set(methods) & {"mlp", "nmtune"} else "none"
    config.views = ml_collections.ConfigDict(
        {"mode": mode, "count": DEFAULT_VIEWS, "recipe": "auto", "seed": 0}
    )
    config.centering = "row"
    config.methods = tuple(methods)
    config.transfer = ml_collections.ConfigDict({m: head(m) for m in METHODS})
    # How many heads of one method the transfer stage trains in one program (many_heads.py; 1 = one by one).
    config.heads_per_program = ml_collections.ConfigDict(dict(HEADS_PER_PROGRAM))
    config.title = "nml-jax transfer report"
    config.overwrite = False  # Move aside results made here under other settings (else: refuse).
    return config


def nmtune(
    *,
    noise: float = 0.1,
    seed: int = 0,
    smoke: bool = False,
    views: str = "bank",
    k: int = DEFAULT_VIEWS,
    train_limit: int = 10000,
) -> ml_collections.ConfigDict:
    """The main job (configs/nmtune.py): embedded pre-training at `noise`, then LP, MLP and NMTune on `views`
    (mode, with `k` views in a bank); the seed drives the noise, the pre-training, every head and the views.
    `smoke` runs the same path on a small slice."""
    config = downstream(METHODS)
    config.stage = "nmtune"
    config.seed = seed
    config.pretrain = embedded_pretrain(noise=noise, seed=seed, smoke=smoke)
    config.pretrain.overwrite = config.get_ref("overwrite")  # One flag for the whole workdir.
    config.train_limit = train_limit
    config.views.update(mode=views, count=k, seed=seed)
    for method in METHODS:
        config.transfer[method].seed = seed
    config.title = f"NMTune on the embedded suite (pre-training noise {noise:g})"
    if smoke:
        config.train_limit = 256
        for method in METHODS:
            config.transfer[method].epochs = 2
    return config
