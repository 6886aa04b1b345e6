"""Align two tokenizations of the same text on UTF-8 byte offsets.

Cross-vocabulary distillation (teacher and student with different tokenizers) needs to know
which student position and which teacher position predict the same piece of text. Both sides
tokenize the *same* string; every token gets the ``(start, end)`` byte span it covers in
``text.encode("utf-8")``. Bytes rather than characters because byte-level BPE may cut one
multibyte character (``"ï"``, ``"東"``, ``"🙂"``) across tokens, and two tokenizers may cut it at
different bytes.

Two alignments are offered:

- :func:`exact_span_matches`: token pairs whose byte spans are identical. Such a pair predicts
  the same bytes after the same byte prefix, so its two distributions are comparable; these are
  the "aligned tokens" of the cross-tokenizer baselines that DSKD (Zhang et al. 2024, EMNLP,
  "Dual-Space Knowledge Distillation for Large Language Models") compares against.
- :func:`span_overlap_matrix`: byte overlaps between every student and teacher token, to map a
  student position to the teacher positions covering it.

Special tokens (``<bos>``, ``<eos>``) cover no text: they get an empty span and
:func:`exact_span_matches` never pairs them; :func:`encode_cross_example` pairs the two EOS
explicitly (both predict "the text ends here" after the same bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ml.data.examples import IGNORE_INDEX, collate

Span = tuple[int, int]
Pair = tuple[int, int]


@cache
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode`` (the ByteLevel pre-tokenizer's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_byte_strings(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[bytes]:
    """The bytes each token stands for: ``ids (L,)`` -> ``L`` byte strings.

    ByteLevel tokens (every character in the 256-character ByteLevel alphabet) are mapped back
    byte by byte, so a token holding half of a multibyte character gives exactly those bytes.
    Special and added tokens give their content's UTF-8; any other token (e.g. a SentencePiece
    piece) gives the UTF-8 of ``tokenizer.decode([id])``.
    """
    decoder = _byte_level_decoder()
    special = set(tokenizer.all_special_ids)
    pieces: list[bytes] = []
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids), strict=True):
        if token_id in special or not all(char in decoder for char in token):
            text = token if token_id in special else tokenizer.decode([token_id])
            pieces.append(str(text).encode("utf-8"))
        else:
            pieces.append(bytes(decoder[char] for char in token))
    return pieces


def _char_to_byte_offsets(text: str) -> list[int]:
    """``offsets[c]`` = byte offset of character ``c`` (``len(text) + 1`` entries)."""
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + len(char.encode("utf-8")))
    return offsets


def encode_with_byte_offsets(
    tokenizer: PreTrainedTokenizerBase, text: str, *, add_bos: bool
) -> tuple[list[int], list[Span]]:
    """Token ids of ``text`` and each token's ``(start, end)`` byte span in its UTF-8.

    The spans come from walking the tokens' bytes (:func:`token_byte_strings`) along
    ``text.encode("utf-8")`` when they concatenate to it exactly (ByteLevel BPE without a
    normalizer or prefix space: the spans are then contiguous, disjoint and exact even inside a
    multibyte character). Otherwise the fast tokenizer's character offsets are converted to bytes;
    there two tokens sharing one character both cover all of its bytes.

    With ``add_bos`` the tokenizer's BOS is prepended with the empty span ``(0, 0)``. No EOS.

    Raises:
        ValueError: ``add_bos`` and the tokenizer has no BOS, or the tokenizer is not fast.
    """
    if not tokenizer.is_fast:
        raise ValueError("byte offsets need a fast (tokenizers-backed) tokenizer")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoding["input_ids"])
    pieces = token_byte_strings(tokenizer, ids)
    spans: list[Span] = []
    if b"".join(pieces) == text.encode("utf-8"):
        position = 0
        for piece in pieces:
            spans.append((position, position + len(piece)))
            position += len(piece)
    else:
        char_to_byte = _char_to_byte_offsets(text)
        spans = [(char_to_byte[a], char_to_byte[b]) for a, b in encoding["offset_mapping"]]
    if add_bos:
        bos = tokenizer.bos_token_id
        if not isinstance(bos, int):
            raise ValueError("add_bos=True but the tokenizer has no BOS token")
        return [bos, *ids], [(0, 0), *spans]
    return ids, spans


def exact_span_matches(student_offsets: list[Span], teacher_offsets: list[Span]) -> list[Pair]:
    """Token index pairs ``(i, j)`` with ``student_offsets[i] == teacher_offsets[j]``.

    Empty spans (special tokens) never match. Sorted by ``i``; each index appears at most once
    when each side's spans are distinct (always, for non-empty spans of one tokenization).
    """
    teacher_at = {span: j for j, span in enumerate(teacher_offsets) if span[1] > span[0]}
    return [
        (i, teacher_at[span])
        for i, span in enumerate(student_offsets)
        if span[1] > span[0] and span in teacher_at
    ]


def span_overlap_matrix(student_offsets: list[Span], teacher_offsets: list[Span]) -> Tensor:
    """Bytes shared by every student token and every teacher token: ``(S_len, T_len)`` float32.

    ``overlap[i, j] = max(0, min(end_i, end_j) - max(start_i, start_j))``. Dividing a row by its
    sum (clamped at 1: special tokens have all-zero rows) gives the share of student token ``i``
    covered by each teacher token.
    """
    student = torch.tensor(student_offsets, dtype=torch.long).reshape(-1, 2)
    teacher = torch.tensor(teacher_offsets, dtype=torch.long).reshape(-1, 2)
    low = torch.maximum(student[:, None, 0], teacher[None, :, 0])
    high = torch.minimum(student[:, None, 1], teacher[None, :, 1])
    return (high - low).clamp(min=0).float()


@dataclass
class CrossExample:
    """One (prompt, response) pair tokenized by a student and a teacher tokenizer.

    Each side is ``[bos]? + tokens of (prompt + response) + [eos]?`` (``L_s`` / ``L_t`` tokens):
    BOS only if that tokenizer has one, EOS unless the response was cut. Offsets are byte spans
    into ``(prompt + response).encode("utf-8")``; ``response_start`` is the response's first
    byte. A token is a response token when its span ends after ``response_start`` (a token
    straddling the boundary counts, as the student must produce it), and EOS is one too.
    Labels are unshifted, as :func:`ml.data.examples.encode_example`: the token id on response
    tokens, -100 elsewhere. ``aligned_pairs`` are the exact-span pairs ``(i, j)`` of response
    tokens plus the two EOS; token ``i`` is predicted by student position ``i - 1``.
    """

    student_ids: list[int]
    teacher_ids: list[int]
    student_offsets: list[Span]
    teacher_offsets: list[Span]
    student_label_mask: list[bool]
    teacher_label_mask: list[bool]
    response_start: int
    aligned_pairs: list[Pair] = field(default_factory=list)

    @property
    def student_labels(self) -> list[int]:
        return _labels(self.student_ids, self.student_label_mask)

    @property
    def teacher_labels(self) -> list[int]:
        return _labels(self.teacher_ids, self.teacher_label_mask)

    def overlap_matrix(self) -> Tensor:
        """:func:`span_overlap_matrix` of the two sides, ``(L_s, L_t)``."""
        return span_overlap_matrix(self.student_offsets, self.teacher_offsets)


def _labels(ids: list[int], mask: list[bool]) -> list[int]:
    return [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask, strict=True)]


def _eos(tokenizer: PreTrainedTokenizerBase) -> int:
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise ValueError("cross-vocabulary examples need an EOS token on both tokenizers")
    return eos


def _count(spans: list[Span], start: int, end: int) -> int:
    return sum(1 for a, b in spans if a >= start and b <= end)


def _window(
    sides: list[list[Span]], budgets: list[int], response_start: int, n_bytes: int, max_length: int
) -> tuple[int, int]:
    """The byte window ``[start, end)`` both sides keep, cut only at boundaries of both.

    As :func:`ml.data.examples.encode_example`: the prompt loses tokens from the left first; if
    the response alone does not fit, the prompt keeps at most ``(max_length - 1) // 2`` tokens
    a side and the response is cut on the right (``end < n_bytes``: no EOS).
    """
    starts = set.intersection(*({a for a, _ in spans} for spans in sides)) | {0}
    candidates = sorted(s for s in starts if s <= response_start)
    for start in candidates:
        if all(_count(s, start, n_bytes) <= b for s, b in zip(sides, budgets, strict=True)):
            return start, n_bytes
    keep = (max_length - 1) // 2
    start = next(
        (c for c in candidates if all(_count(s, c, response_start) <= keep for s in sides)),
        candidates[-1],
    )
    ends = set.intersection(*({b for _, b in spans} for spans in sides))
    limits = [budget + 1 for budget in budgets]  # no EOS after a cut response
    fits = [
        e
        for e in ends
        if e > start and all(_count(s, start, e) <= n for s, n in zip(sides, limits, strict=True))
    ]
    return start, max(fits, default=start)


def encode_cross_example(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    max_length: int,
) -> CrossExample:
    """Tokenize ``prompt + response`` (prompt already templated) with both tokenizers.

    Each side is at most ``max_length`` tokens; both keep the same bytes of the text (see
    :func:`_window` for truncation), so their spans stay comparable.

    Raises:
        ValueError: ``max_length < 3`` or a tokenizer has no EOS.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    text = prompt + response
    n_bytes = len(text.encode("utf-8"))
    response_start = len(prompt.encode("utf-8"))
    tokenizers = (student_tokenizer, teacher_tokenizer)
    encoded = [encode_with_byte_offsets(tok, text, add_bos=False) for tok in tokenizers]
    has_bos = [isinstance(tok.bos_token_id, int) for tok in tokenizers]
    budgets = [max_length - int(bos) - 1 for bos in has_bos]
    all_spans = [spans for _, spans in encoded]
    start, end = _window(all_spans, budgets, response_start, n_bytes, max_length)
    sides: list[tuple[list[int], list[Span], list[bool]]] = []
    for tok, (ids, spans), bos in zip(tokenizers, encoded, has_bos, strict=True):
        kept = [(t, s) for t, s in zip(ids, spans, strict=True) if s[0] >= start and s[1] <= end]
        side_ids = [t for t, _ in kept]
        side_spans = [s for _, s in kept]
        mask = [s[1] > response_start for s in side_spans]
        if bos:
            side_ids.insert(0, int(tok.bos_token_id))
            side_spans.insert(0, (0, 0))
            mask.insert(0, False)
        if end == n_bytes:
            side_ids.append(_eos(tok))
            side_spans.append((end, end))
            mask.append(True)
        sides.append((side_ids, side_spans, mask))
    (s_ids, s_spans, s_mask), (t_ids, t_spans, t_mask) = sides
    pairs = [(i, j) for i, j in exact_span_matches(s_spans, t_spans) if s_mask[i] and t_mask[j]]
    if end == n_bytes:
        pairs.append((len(s_ids) - 1, len(t_ids) - 1))
    return CrossExample(s_ids, t_ids, s_spans, t_spans, s_mask, t_mask, response_start, pairs)


def pair_positions(pairs: list[list[Pair]]) -> tuple[Tensor, Tensor, Tensor]:
    """Turn per-example token pairs into logit positions of the once-shifted logits.

    Token ``i`` is predicted by position ``i - 1`` of ``logits[:, :-1]``; pairs with a token 0
    (nothing predicts it) are dropped. Returns ``student_index (B, K)`` long,
    ``teacher_index (B, K)`` long (0 where padded) and ``pair_mask (B, K)`` bool, with ``K``
    the most pairs of any example (at least 1).
    """
    kept = [[(i - 1, j - 1) for i, j in example if i > 0 and j > 0] for example in pairs]
    width = max([len(example) for example in kept] + [1])
    student_index = torch.zeros((len(pairs), width), dtype=torch.long)
    teacher_index = torch.zeros((len(pairs), width), dtype=torch.long)
    pair_mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, example in enumerate(kept):
        if example:
            student_index[row, : len(example)] = torch.tensor([i for i, _ in example])
            teacher_index[row, : len(example)] = torch.tensor([j for _, j in example])
            pair_mask[row, : len(example)] = True
    return student_index, teacher_index, pair_mask


def collate_cross_examples(
    examples: list[CrossExample],
    *,
    student_pad_id: int,
    teacher_pad_id: int,
    pairs: list[list[Pair]] | None = None,
) -> dict[str, Tensor]:
    """Right-pad a batch of :class:`CrossExample` for both models.

    Returns ``student_input_ids``, ``student_attention_mask``, ``student_labels`` ``(B, L_s)``
    and the same for ``teacher_`` ``(B, L_t)`` (labels unshifted, -100 padded), plus
    ``student_index``, ``teacher_index``, ``pair_mask`` ``(B, K)`` from :func:`pair_positions`
    over ``pairs`` (default: each example's ``aligned_pairs``).
    """
    batch: dict[str, Tensor] = {}
    for prefix, pad_id in (("student", student_pad_id), ("teacher", teacher_pad_id)):
        rows = [
            {"input_ids": getattr(ex, f"{prefix}_ids"), "labels": getattr(ex, f"{prefix}_labels")}
            for ex in examples
        ]
        for key, value in collate(rows, pad_id).items():
            batch[f"{prefix}_{key}"] = value
    chosen = pairs if pairs is not None else [example.aligned_pairs for example in examples]
    student_index, teacher_index, pair_mask = pair_positions(chosen)
    batch.update(student_index=student_index, teacher_index=teacher_index, pair_mask=pair_mask)
    return batch
