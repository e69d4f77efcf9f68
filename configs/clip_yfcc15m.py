"""CLIP pre-training on YFCC15M TFRecord shards with caption-swap noise (the paper's contrastive setting).

Chen et al. (ICLR 2024) pre-train CLIP on YFCC15M with the captions of a fraction of the pairs swapped at random,
at noise ratios 0, 5, 10, 20 and 30 % (the same ratios as their ImageNet-1k study; variant `noise=`), and probe
the image encoder (ResNet-50; ViT-B/16 as `model=vit_b16`).

Recipe written out here, with its sources (the paper's appendix was not re-checked when this file was written;
compare before quoting numbers):
- model: CLIP RN50 (CLIP paper: ResNet-50 with attention pooling, 1024-d embedding; text transformer 12 layers,
  width 512, 8 heads, context 77, BPE vocabulary 49,408). The image trunk is this project's ResNet-50 (v1.5
  blocks, 7x7 stem), not OpenAI's 3-conv, anti-aliased stem.
- batch 4,096, 32 epochs, AdamW lr 5e-4, beta2 0.98, weight decay 0.2, 2,000 warmup steps then cosine, bfloat16
  compute: the OpenAI CLIP hyper-parameters for RN50 (lr 5e-4, wd 0.2, beta2 0.98, 2,000 warmup iterations)
  at the batch and epoch count OpenCLIP used for its YFCC15M RN50 run. AdamW eps is optax's 1e-8 (CLIP used
  1e-6; pretrain.make_optimizer has no eps setting).
- images: inception crop to 224 (scale 0.9-1.0 in OpenCLIP; the project's op crops 8-100 %), CLIP's mean/std.
- zero-shot: ImageNet-1k validation (TFDS imagenet2012, prepared in data_dir) with its class names.

Data layout: `shards=` is a glob of TFRecord files of tf.train.Example with `jpg` (encoded image) and `txt`
(caption) bytes, e.g. written by img2dataset (--output_format tfrecord) or captions.write_shards.

    python -m nml_jax.main --config=configs/clip_yfcc15m.py:noise=0.1,shards=gs://B/yfcc15m/*.tfrecord \
        --workdir=/mnt/shared/clip_yfcc_n10
"""

from nml_jax import config_lib, defaults

RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3)
CLIP_MEAN = "(0.48145466, 0.4578275, 0.40821073)"
CLIP_STD = "(0.26862954, 0.26130258, 0.27577711)"


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, noise=0.0, seed=0, model="rn50", shards="", data_dir="", fsdp=False
    )
    config_lib.check_choice("noise", arg.noise, RATIOS)
    config_lib.check_choice("model", arg.model, ["rn50", "vit_b16"])
    config = defaults.clip_pretrain()
    config.dataset = "tfrecord"
    config.shards = arg.shards or "/path/to/yfcc15m/*.tfrecord"
    config.noise = defaults.noise_block("caption_swap", arg.noise, arg.seed)
    config.seed = arg.seed
    config.model = defaults.clip_model(arg.model, "bfloat16")
    config.tokenizer_texts = 2_000_000  # The BPE is trained on the first 2M captions.
    config.input.batch_size = 4096
    config.input.eval_batch_size = 1024
    config.input.pp_train = (
        f"decode_jpeg_and_inception_crop(224)|value_range(0, 1)|normalize({CLIP_MEAN}, {CLIP_STD})"
    )
    config.input.pp_eval = (
        f"decode|resize_small(224)|central_crop(224)|value_range(0, 1)"
        f"|normalize({CLIP_MEAN}, {CLIP_STD})"
    )
    config.total_epochs = 32.0
    config.warmup_epochs = None
    config.warmup_steps = 2000
    config.optimizer.update(name="adamw", lr=5e-4, b1=0.9, b2=0.98, weight_decay=0.2)
    config.zero_shot.update(
        dataset="imagenet2012", split="validation", data_dir=arg.data_dir or None
    )
    config.fsdp = arg.fsdp
    config.log_every_steps = 100
    config.ckpt_every_steps = 1000
    config.keep_checkpoints = 3
    return config
