"""Downstream tasks: which features train a head and which test it.

An ID task trains and tests on one dataset's splits. An OOD task trains on a source domain and tests on shifted
domains with the same classes (the paper's DomainNet protocol); predictions are always in the source's label space.
Suites are lists of tasks; the embedded suite runs offline, the paper suites name TFDS datasets.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Domain:
    """One split of one dataset, under the name results.csv uses for it."""

    name: str
    dataset: str
    split: str


@dataclasses.dataclass(frozen=True)
class Task:
    """A head is trained on `train` and scored on each of `tests`; `kind` is 'id' or 'ood'."""

    name: str
    kind: str
    train: Domain
    tests: tuple[Domain, ...]


def id_task(name: str, dataset: str, train_split: str = "train", test_split: str = "test") -> Task:
    return Task(
        name, "id", Domain(name, dataset, train_split), (Domain(name, dataset, test_split),)
    )


def ood_task(name: str, source: Domain, targets: dict[str, tuple[str, str]]) -> Task:
    """`targets` maps a domain name to (dataset, split)."""
    tests = tuple(Domain(target, dataset, split) for target, (dataset, split) in targets.items())
    return Task(name, "ood", source, tests)


def _configs(family: str) -> list[str]:
    """The configs of an embedded shifted family, e.g. `nml_mnist_c` -> ['shot_noise', ...]."""
    from nml_jax.data import EMBEDDED

    return [name.split("/", 1)[1] for name in EMBEDDED if name.startswith(family + "/")]


def limit_train(suite: list[Task], limit: int | None, data_dir: str | None = None) -> list[Task]:
    """`suite` with every training split cut to its first `limit` examples (`data.limit_split`)."""
    return _limit(suite, limit, data_dir, train=True)


def limit_test(suite: list[Task], limit: int | None, data_dir: str | None = None) -> list[Task]:
    """`suite` with every test split (ID and OOD) cut to its first `limit` examples, for slow encoders."""
    return _limit(suite, limit, data_dir, train=False)


def _limit(suite: list[Task], limit: int | None, data_dir: str | None, train: bool) -> list[Task]:
    if not limit:
        return suite
    from nml_jax import data

    def cut(domain: Domain) -> Domain:
        split = data.limit_split(domain.dataset, domain.split, limit, data_dir)
        return dataclasses.replace(domain, split=split)

    if train:
        return [dataclasses.replace(task, train=cut(task.train)) for task in suite]
    return [dataclasses.replace(task, tests=tuple(map(cut, task.tests))) for task in suite]


def embedded_suite() -> list[Task]:
    """ID: Fashion-MNIST, MNIST-5k, UCI digits. OOD: MNIST-5k -> UCI digits, MNIST-M, printed digits, MNIST-C;
    Fashion-MNIST -> Fashion-MNIST-C and sketch."""
    fmnist = Domain("fashion_mnist", "nml_fashion_mnist", "train")
    mnist = Domain("mnist5k", "nml_mnist5k", "train")
    digits_targets = {
        "uci_digits": ("nml_uci_digits", "test"),
        "mnist_m": ("nml_mnist_m", "test"),
        "printed_digits": ("nml_printed_digits", "test"),
        **{f"mnist_c_{c}": (f"nml_mnist_c/{c}", "test") for c in _configs("nml_mnist_c")},
    }
    fashion_targets = {
        **{
            f"fashion_mnist_c_{c}": (f"nml_fashion_mnist_c/{c}", "test")
            for c in _configs("nml_fashion_mnist_c")
        },
        "fashion_mnist_sketch": ("nml_fashion_mnist_sketch", "test"),
    }
    return [
        id_task("fashion_mnist", "nml_fashion_mnist"),
        id_task("mnist5k", "nml_mnist5k"),
        id_task("uci_digits", "nml_uci_digits"),
        ood_task("mnist5k_ood", mnist, digits_targets),
        ood_task("fashion_mnist_ood", fmnist, fashion_targets),
    ]


# The paper's ID suite (Chen et al. 2024; the dataset list of the official NMTune code) as TFDS names, with the
# splits the official code trains and tests on: torchvision's splits for the natural-image sets, VTAB's
# trainval/test (task_adaptation, read through clip_benchmark) for Caltech101, EuroSAT, PatchCamelyon, RESISC45
# and SVHN. Sizes are those the TFDS catalog documents.
PAPER_ID = {
    "cifar10": ("train", "test"),  # 50,000 / 10,000.
    "cifar100": ("train", "test"),  # 50,000 / 10,000.
    "oxford_flowers102": ("train", "test"),  # torchvision split='train': 1,020 / 6,149.
    "food101": (
        "train",
        "validation",
    ),  # 75,750 / 25,250 (TFDS names the official test split validation).
    "oxford_iiit_pet": ("train", "test"),  # The official trainval 3,680 / test 3,669.
    "cars196": ("train", "test"),  # 8,144 / 8,041.
    "fgvc_aircraft": (
        "train",
        "test",
    ),  # torchvision split='train': 3,334 / 3,333 (nml_jax.data.aircraft).
    "dtd": ("train", "test"),  # torchvision split='train' (partition 1): 1,880 / 1,880.
    "caltech101": ("train", "test"),  # VTAB trainval = TFDS train 3,060 / test 6,084.
    "eurosat/rgb": (
        "train[:80%]",
        "train[80%:]",
    ),  # VTAB: trainval 21,600 / test 5,400 (TFDS has train only).
    "patch_camelyon": ("train+validation", "test"),  # VTAB trainval 294,912 / test 32,768.
    "resisc45": (
        "train[:80%]",
        "train[80%:]",
    ),  # VTAB: trainval 25,200 / test 6,300 (TFDS has train only).
    "svhn_cropped": ("train", "test"),  # VTAB trainval 73,257 / test 26,032.
}

DOMAINNET_DOMAINS = ("real", "sketch", "painting", "clipart")


def paper_id_suite() -> list[Task]:
    return [id_task(name.split("/")[0], name, tr, te) for name, (tr, te) in PAPER_ID.items()]


def domainnet_suite(source: str = "real") -> list[Task]:
    """DomainNet (TFDS `domainnet/<domain>`): train on `source`, test on every domain (the source's test too)."""
    src = Domain(source, f"domainnet/{source}", "train")
    targets = {d: (f"domainnet/{d}", "test") for d in DOMAINNET_DOMAINS}
    return [ood_task(f"domainnet_{source}", src, targets)]


def imagenet_ood_suite() -> list[Task]:
    """ImageNet -> ImageNet-V2 / Sketch / A / R, in the source's 1,000-class label space.

    ImageNet-A and -R cover 200-class subsets (TFDS labels them in the 1,000-class space); their logits are
    masked to those 200 classes (`data.classes.subset`), as in the papers that published them.
    """
    src = Domain("imagenet", "imagenet2012", "train")
    targets = {
        "imagenet": ("imagenet2012", "validation"),
        "imagenet_v2": ("imagenet_v2", "test"),
        "imagenet_sketch": ("imagenet_sketch", "test"),
        "imagenet_a": ("imagenet_a", "test"),
        "imagenet_r": ("imagenet_r", "test"),
    }
    return [ood_task("imagenet_ood", src, targets)]


SUITES = {
    "embedded": embedded_suite,
    "paper_id": paper_id_suite,
    "domainnet_real": lambda: domainnet_suite("real"),
    "domainnet_sketch": lambda: domainnet_suite("sketch"),
    "imagenet_ood": imagenet_ood_suite,
}
