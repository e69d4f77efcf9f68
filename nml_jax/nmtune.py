"""Stage `nmtune`, the main job: the whole pipeline at one noise level in one workdir.

noise -> pre-training (pretrain.run, or the checkpoint already in the workdir) -> features -> spectrum -> LP,
MLP and NMTune on the ID and OOD suite -> results.csv, spectrum.json, report.md, figures. With
`config.pretrained` (another pre-training workdir) or `config.features_npz` (black-box features) nothing is
pre-trained here.
"""

from __future__ import annotations

from typing import Any

from nml_jax import config_lib, pretrain, report, transfer


def validate(config) -> None:
    """Raises ConfigError naming the first invalid key, in the pre-training block too when it will run."""
    transfer.validate(config)
    if not (config.get("pretrained") or config.get("features_npz")):
        with config_lib.nested("pretrain"):
            pretrain.validate(config.pretrain)


def run(config, workdir: str) -> dict[str, Any]:
    """Stage `nmtune`: pre-train unless an encoder or features are given, then the transfer stage."""
    if config.get("features_npz"):
        # Black-box features replace pre-training and the encoder; the default title would name the embedded study.
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.title = f"LP, MLP and NMTune on the features in {config.features_npz}"
    elif not config.get("pretrained"):
        pretrain.run(config.pretrain, workdir)
    out = transfer.evaluate(config, workdir)
    # The printed summary leaves out the same pre-training sets as report.md (another model's: none of ours).
    summary = report.markdown(out["rows"], {}, config.title, **out["context"])
    print(summary.split("## Every test set")[0])
    return out
