"""A byte-level BPE tokenizer for captions, trained offline with the Hugging Face `tokenizers` library.

CLIP uses a lower-cased byte-level BPE with start-of-text (SOT) and end-of-text (EOT) tokens; this module trains
one of a chosen vocabulary size on the caption corpus itself (nothing is downloaded), saves it as JSON next to
the checkpoint (`<workdir>/tokenizer.json`) and reloads it on resume and for zero-shot prompts.

`encode` gives a fixed-length int32 array per text: [SOT, t_1, ..., t_k, EOT, PAD, ...]. Texts longer than the
context are cut so the last slot is still EOT, as CLIP does; the text tower reads the EOT position, which is
always the last non-padding token.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from nml_jax import files

PAD, SOT, EOT = "<pad>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, SOT, EOT)  # Ids 0, 1, 2.
FILE_NAME = "tokenizer.json"


class Tokenizer:
    """Byte-level BPE with SOT/EOT/PAD special tokens (ids `sot_id`, `eot_id`, `pad_id` = 0)."""

    def __init__(self, hf_tokenizer: _HFTokenizer):
        self._tok = hf_tokenizer
        ids = [hf_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError(f"The tokenizer lacks the special tokens {SPECIAL_TOKENS}.")
        self.pad_id, self.sot_id, self.eot_id = ids

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        """int32 [N, context_length]: SOT, the BPE ids (cut to fit), EOT, then PAD (0)."""
        if context_length < 3:
            raise ValueError(f"context_length={context_length} must be >= 3 (SOT, a token, EOT).")
        out = np.full((len(texts), context_length), self.pad_id, np.int32)
        for row, encoding in enumerate(self._tok.encode_batch(list(texts))):
            ids = [self.sot_id, *encoding.ids[: context_length - 2], self.eot_id]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The text of one row of `encode`, without the special tokens."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: str) -> None:
        """Writes the tokenizer as JSON (atomically; `path` may be a URL)."""
        files.write_text(path, self._tok.to_str(pretty=True))

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        if not files.exists(path):
            raise FileNotFoundError(f"No tokenizer at {path}; train one with tokenizer.train(...).")
        return cls(_HFTokenizer.from_str(files.read_text(path)))


def train(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Trains a lower-cased byte-level BPE of (at most) `vocab_size` ids on `texts`.

    The 256 byte symbols and the three special tokens are always in the vocabulary, so any text encodes.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} must be >= {minimum} (256 bytes + specials).")
    tok = _HFTokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)


def load_or_train(workdir: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """`<workdir>/tokenizer.json` when it exists (a resumed run), else a new one trained on `texts` and saved."""
    path = os.path.join(workdir, FILE_NAME)
    if files.exists(path):
        return Tokenizer.load(path)
    result = train(texts, vocab_size)
    result.save(path)
    return result
