"""User-input errors outside configs: a malformed model card or JSON file, an unknown dataset name."""

import json
import os

import pytest

from nml_jax import config_lib, data, encoders, files, nmtune, noise

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

GOOD_CARD = {
    "kind": "classifier",
    "input_shape": [28, 28, 1],
    "noise_ratio": 0.1,
    "seed": 0,
    "config": {"model": {"name": "cnn"}},
}


def _card(**changes):
    card = {k: v for k, v in {**GOOD_CARD, **changes}.items() if v is not None}
    return json.dumps(card).encode()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", r"Model card .*model.json is not valid JSON \(Expecting"),
        (b"", "is not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (b"[1, 2]", "holds a JSON list, expected an object"),
        (_card(kind=None), r"missing \['kind'\] \(it has \['config'"),
        (_card(seed=None, config=None), r"missing \['seed', 'config'\]"),
        (_card(kind="clip"), r"missing \['pad_id'\]"),
        (_card(kind="gan"), "field 'kind' is 'gan'; expected one of"),
        (_card(input_shape="28x28"), "field 'input_shape' is '28x28'; expected a list of positive"),
        (_card(input_shape=[28, 0, 1]), "field 'input_shape'"),
        (_card(noise_ratio="0.1"), "field 'noise_ratio' is '0.1'; expected a number in"),
        (_card(seed=1.5), "field 'seed' is 1.5; expected an integer"),
        (_card(config=[]), "field 'config' is \\[\\]; expected a JSON object"),
    ],
)
def test_malformed_model_card_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "model.json").write_bytes(content)
    with pytest.raises(encoders.ModelCardError, match=message) as raised:
        encoders.read_card(str(tmp_path))
    text = str(raised.value)
    assert os.path.join(str(tmp_path), "model.json") in text and "\n" not in text
    assert isinstance(raised.value, config_lib.UserError)


def test_good_model_card_reads(tmp_path):
    (tmp_path / "model.json").write_bytes(_card())
    assert encoders.read_card(str(tmp_path))["seed"] == 0


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(files.FileFormatError, match=r"dir\.json is a directory"):
        files.read_json(str(tmp_path / "dir.json"))
    assert files.read_json(str(tmp_path / "absent.json"), default=3) == 3
    assert issubclass(files.FileFormatError, config_lib.UserError)


def test_unknown_dataset_is_one_short_line_with_a_close_match():
    with pytest.raises(data.DatasetError) as raised:
        data.check_name("nml_fashion_mist", "pretrain.dataset")
    text = str(raised.value)
    assert text.startswith(
        "Unknown dataset 'nml_fashion_mist' (config.pretrain.dataset). Did you mean 'nml_fashion_mnist'?"
    )
    assert "nml_mnist_c/{fog," in text and "data_dir" in text
    assert "\n" not in text and len(text) < 600
    with pytest.raises(data.DatasetError, match=r"Unknown dataset 'xyz'\.") as raised:
        data.builder("xyz")  # TFDS's own error lists hundreds of datasets.
    assert "Did you mean" not in str(raised.value) and raised.value.__cause__ is None
    data.check_name("nml_mnist_c/fog")
    data.check_name(
        "imagenet2012/subset:5.0.0"
    )  # Registered in TFDS; whether it is prepared is checked on load.


def test_stage_validation_names_the_dataset_key():
    """An unknown dataset fails in the stage's validate, before any data is read, under its nested key."""
    config = config_lib.load_config(os.path.join(CONFIGS, "nmtune.py") + ":smoke")
    config.pretrain.dataset = "xyz"
    with pytest.raises(
        data.DatasetError, match=r"Unknown dataset 'xyz' \(config.pretrain.dataset\)"
    ):
        nmtune.validate(config)
    config = config_lib.load_config(os.path.join(CONFIGS, "noise.py"))
    config.dataset = "nml_mnist5"
    with pytest.raises(data.DatasetError, match=r"\(config.dataset\). Did you mean 'nml_mnist5k'"):
        noise.validate(config)
