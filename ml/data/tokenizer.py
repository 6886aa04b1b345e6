"""Train a small byte-level BPE tokenizer with the ``tokenizers`` library (no hub needed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    The ByteLevel pre-tokenizer plus the full 256-byte initial alphabet means any string encodes
    without ``<unk>`` and decodes back to itself. Special tokens get ids 0..3 in the order
    ``<pad>, <bos>, <eos>, <unk>``. No post-processor is attached: callers add ``<bos>``/``<eos>``
    explicitly (see :func:`ml.data.examples.encode_example`).
    """
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def _backend(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError("tokenizer_sha256 needs a fast (tokenizers-backed) tokenizer")
    return backend


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> str:
    """Hex sha256 of the tokenizer's canonical JSON: model (vocab + merges) and added tokens.

    Keys are sorted, so two tokenizers with the same vocabulary, merges and special tokens hash
    equal whatever object they were loaded into; padding/truncation settings do not count.
    """
    full: dict[str, Any] = json.loads(_backend(tokenizer).to_str())
    canonical = {"model": full.get("model"), "added_tokens": full.get("added_tokens")}
    payload = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
