"""Config helpers shared by every file in configs/ and by the stages.

Configs are `ml_collections.ConfigDict`s built by a `get_config(arg)` function. The `arg` string carries small
typed variants, e.g. `configs/pretrain.py:noise=0.1,smoke`, parsed by `parse_arg`.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import hashlib
import json
import math
import os
from collections.abc import Iterable
from typing import Any

import ml_collections


class UserError(Exception):
    """Bad input from the user (a config value, a file, a workdir): `main` prints its message as one line."""


class ConfigError(UserError, ValueError):
    """A config value is invalid; the message names the key, the value and what was expected."""


_PREFIX = contextvars.ContextVar("config_prefix", default="")


@contextlib.contextmanager
def nested(block: str):
    """Checks inside this context name their keys within `block`, e.g. `pretrain.model.name`."""
    token = _PREFIX.set(f"{_PREFIX.get()}{block}.")
    try:
        yield
    finally:
        _PREFIX.reset(token)


def key_name(name: str) -> str:
    """`name` with the enclosing blocks of `nested`, as the command line spells it (without `config.`)."""
    return _PREFIX.get() + name


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `key=value,flag` into a ConfigDict typed after `defaults`.

    A bare word sets a boolean default to True. Values are read with `ast.literal_eval` (never `eval`) and cast
    to the type of the default. Unknown keys raise a ConfigError listing the known ones.
    """
    result = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return result
    for item in _split_top_level(arg):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"Unknown config variant {key!r} in {arg!r}; expected one of {sorted(defaults)}."
            )
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ConfigError(f"Config variant {key!r} needs a value, e.g. {key}={default!r}.")
            result[key] = True
            continue
        result[key] = _cast(key, raw.strip(), default)
    return result


def _split_top_level(arg: str) -> list[str]:
    """Splits on commas that are not inside brackets, so `ratios=(0.1,0.2),smoke` works."""
    items, depth, current = [], 0, ""
    for char in arg:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if current:
        items.append(current)
    return [item for item in items if item.strip()]


def _cast(key: str, raw: str, default: Any) -> Any:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # A bare string such as `dataset=mnist5k`.
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"Config variant {key}={raw!r}: expected True or False.")
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if default is not None and not isinstance(value, type(default)):
        raise ConfigError(
            f"Config variant {key}={raw!r}: expected a {type(default).__name__} like {default!r}."
        )
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raises ConfigError unless `value` is one of `allowed`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(
            f"config.{key_name(name)}={value!r} is not valid; expected one of {allowed}."
        )


def check_range(
    name: str, value: Any, low: float, high: float, *, low_open=False, high_open=False
) -> None:
    """Raises ConfigError unless low <= value <= high (with open ends where asked); NaN always fails."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(
            f"config.{key_name(name)}={value!r} is not valid; expected a number in "
            f"{left}{low}, {high}{right}."
        )


def check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            f"config.{key_name(name)}={value!r} is not valid; expected a positive integer."
        )


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as stable, indented JSON."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=repr)


# Keys that change how a run is watched or laid out, never what it computes: not part of a fingerprint.
NOT_FINGERPRINTED = (
    "stage",
    "title",
    "log_every_steps",
    "ckpt_every_steps",
    "eval_every_steps",
    "keep_checkpoints",
    "num_devices",
    "fsdp",
    "distributed",
    "overwrite",
    "feature_cache_dir",
    "feature_chunk_size",
    "feature_batch_size",
    # Like num_devices: the same heads, up to float32 round-off (many_heads.py).
    "heads_per_program",
)


def fingerprint(config: ml_collections.ConfigDict | dict) -> str:
    """A short hash of every field of `config` that decides its result (all but NOT_FINGERPRINTED, at any depth)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in NOT_FINGERPRINTED}
        return value

    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    blob = json.dumps(strip(as_dict), sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes `<workdir>/config.json` and returns its path."""
    from nml_jax import files

    path = os.path.join(workdir, "config.json")
    files.write_text(path, to_json(config) + "\n")
    return path


def steps_for(total: int | None, epochs: float | None, steps_per_epoch: int, name: str) -> int:
    """Turns a duration given as `total_steps` or `total_epochs` into steps (steps take precedence)."""
    if total is None and epochs is None:
        raise ConfigError(f"Set config.{name}_steps or config.{name}_epochs.")
    if total is not None:
        return int(total)
    return max(1, round(float(epochs) * steps_per_epoch))


def itstime(step: int, every: int | None, total: int, *, last: bool = True) -> bool:
    """Whether periodic work (logging, checkpointing) is due after `step` (1-based) of `total`."""
    return bool((every and step % every == 0) or (last and step == total))


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file named as on the command line: `configs/pretrain.py:noise=0.3,smoke`."""
    import importlib.util

    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"No config file {path!r}.")
    name = os.path.splitext(os.path.basename(path))[0]
    spec_ = importlib.util.spec_from_file_location(f"nml_jax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module.get_config(arg or None)
