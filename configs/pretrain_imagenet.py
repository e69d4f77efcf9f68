"""ResNet-50 on ImageNet-1k (TFDS `imagenet2012`) with label noise, the standard 90-epoch recipe.

The paper's noisy ImageNet pre-training at ratios 0, 0.05, 0.1, 0.2, 0.3 (variant `noise=`). The data must
be prepared in `data_dir` (tfds build imagenet2012 with the manual download); it is streamed, not loaded.
Recipe: batch 1024, SGD Nesterov momentum 0.9, lr 0.4 (= 0.1 x 1024/256), 5 warmup epochs then cosine,
90 epochs, weight decay 1e-4 (not on batch-norm and bias), label smoothing 0.1, inception crop 224 + flip,
bfloat16 compute with float32 parameters.

    python -m nml_jax.main --config=configs/pretrain_imagenet.py:noise=0.1 --workdir=/mnt/shared/in1k_n10
    launch/tpu_pod.sh configs/pretrain_imagenet.py:noise=0.1 /mnt/shared/in1k_n10
"""

from nml_jax import config_lib, defaults

RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3)


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, noise=0.0, seed=0, model="resnet50", data_dir="", fsdp=False, smoke=False
    )
    config_lib.check_choice("noise", arg.noise, RATIOS)
    config = defaults.pretrain()
    config.dataset = "imagenet2012"
    config.data_dir = arg.data_dir or None
    config.test_split = "validation"
    config.noise = defaults.noise_block("symmetric", arg.noise, arg.seed)
    config.seed = arg.seed
    config.model = {"name": arg.model, "dtype": "bfloat16"}
    config.input.stream = True
    config.input.batch_size = 1024
    config.input.eval_batch_size = 1024
    # `normalize` defaults to the ImageNet mean and std of [0, 1] pixels.
    config.input.pp_train = (
        "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(0, 1)|normalize"
    )
    config.input.pp_eval = "decode|resize_small(256)|central_crop(224)|value_range(0, 1)|normalize"
    config.total_epochs = 90.0
    config.warmup_epochs = 5.0
    config.optimizer.update(
        name="sgd", lr=0.4, momentum=0.9, nesterov=True, weight_decay=1e-4, clip_norm=None
    )
    config.label_smoothing = 0.1
    config.fsdp = arg.fsdp
    config.log_every_steps = 100
    config.ckpt_every_steps = 1000
    config.eval_every_steps = 6255  # Every 5 epochs of 1,251 steps.
    config.keep_checkpoints = 3
    if arg.smoke:
        config.model.name = "resnet18"
        config.model.width = 8
        config.input.batch_size = 16
        config.input.eval_batch_size = 16
        config.total_epochs = None
        config.total_steps = 2
        config.warmup_epochs = 0.0
    return config
