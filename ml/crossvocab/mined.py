"""MinED: minimum-edit-distance alignment of tokens and vocabularies, and its KD loss.

From FuseLLM (Wan et al. 2024, ICLR, "Knowledge Fusion of Large Language Models", Sec. 3.3
"token alignment"), used as a cross-tokenizer baseline in DSKD's comparisons (Zhang et al.
2024, EMNLP, "Dual-Space Knowledge Distillation for Large Language Models"). Two pieces:

1. *Sequence alignment*: the two tokenizations of one text are aligned by dynamic time warping
   whose local cost is the edit distance between token strings (:func:`min_edit_alignment`).
2. *Vocabulary mapping*: each teacher token is mapped to the student token whose string is
   closest in edit distance (:func:`build_vocab_map`); a teacher distribution is projected onto
   the student vocabulary by summing the probabilities of the teacher tokens mapped to each
   student token (:func:`project_teacher_probs`).

The loss (:func:`mined_loss`) is the forward ``KL(p_mapped || q)`` at aligned positions.

Token strings are the tokens' UTF-8 bytes decoded with ``errors="surrogateescape"``: whole
characters read as text (``" café"``) and each byte of a fragment of a multibyte character as
one lone surrogate (``b"\\xc3"`` -> ``"\\udcc3"``): a fragment byte costs one edit, like a
character, and never equals a real character or a different byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ml.crossvocab.alignment import CrossExample, Pair, token_byte_strings
from ml.data.tokenizer import tokenizer_sha256
from ml.distillation.divergences import forward_kl

REDUCTIONS = ("mean", "sum")
_ROLES = ("eos", "bos", "pad", "unk")
_QUERY_CHUNK = 128


def token_texts(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """Each token's string (see the module doc): ``ids (L,)`` -> ``L`` strings."""
    return [
        piece.decode("utf-8", errors="surrogateescape")
        for piece in token_byte_strings(tokenizer, ids)
    ]


@lru_cache(maxsize=65536)
def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit insert, delete, substitute)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def min_edit_alignment(student_tokens: Sequence[str], teacher_tokens: Sequence[str]) -> list[Pair]:
    """Align two token sequences by DTW with edit-distance cost (FuseLLM's token alignment).

    ``D[i][j] = ed(s_i, t_j) + min(D[i-1][j-1], D[i-1][j], D[i][j-1])`` with ``D[0][0] =
    ed(s_0, t_0)``; the returned warping path ``[(i, j), ...]`` is monotone, starts at
    ``(0, 0)``, ends at ``(S-1, T-1)`` and covers every index of both sides (a token may pair
    with several tokens of the other side). Backtracking prefers the diagonal, then a step on
    the student side, then on the teacher side, on equal cost. Empty input gives ``[]``.
    """
    rows, cols = len(student_tokens), len(teacher_tokens)
    if rows == 0 or cols == 0:
        return []
    inf = float("inf")
    cost = [[inf] * (cols + 1) for _ in range(rows + 1)]
    cost[0][0] = 0.0
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            local = edit_distance(student_tokens[i - 1], teacher_tokens[j - 1])
            cost[i][j] = local + min(cost[i - 1][j - 1], cost[i - 1][j], cost[i][j - 1])
    i, j = rows, cols
    path = [(i - 1, j - 1)]
    while (i, j) != (1, 1):
        moves = [(cost[i - 1][j - 1], i - 1, j - 1), (cost[i - 1][j], i - 1, j)]
        moves.append((cost[i][j - 1], i, j - 1))
        _, i, j = min(moves, key=lambda move: move[0])  # min keeps the first of equal costs
        path.append((i - 1, j - 1))
    return path[::-1]


def mined_pairs(
    example: CrossExample,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
) -> list[Pair]:
    """Token pairs ``(i, j)`` of one :class:`CrossExample` for :func:`mined_loss`.

    The text tokens (no BOS/EOS) of both sides are aligned by :func:`min_edit_alignment`; as in
    FuseLLM, a student token is distilled from the teacher only when the path pairs it with
    exactly one teacher token (several student tokens may share that teacher token). Pairs are
    kept when both tokens are response tokens, and the two EOS are paired. Feed the result to
    :func:`ml.crossvocab.alignment.collate_cross_examples` (``pairs=``).

    Departures from FuseLLM/DSKD's code: a student token with several teacher partners is
    skipped instead of given a one-hot target on its label (the recipe's CE term already is
    that), and token strings are compared as decoded text, so no space marker (``Ġ``/``▁``)
    needs stripping.
    """
    special_s, special_t = (
        set(student_tokenizer.all_special_ids),
        set(teacher_tokenizer.all_special_ids),
    )
    s_keep = [i for i, t in enumerate(example.student_ids) if t not in special_s]
    t_keep = [j for j, t in enumerate(example.teacher_ids) if t not in special_t]
    s_texts = token_texts(student_tokenizer, [example.student_ids[i] for i in s_keep])
    t_texts = token_texts(teacher_tokenizer, [example.teacher_ids[j] for j in t_keep])
    path = min_edit_alignment(s_texts, t_texts)
    partners: dict[int, list[int]] = {}
    for a, b in path:
        partners.setdefault(a, []).append(b)
    pairs = []
    for a, bs in sorted(partners.items()):
        i, j = s_keep[a], t_keep[bs[0]]
        if len(bs) == 1 and example.student_label_mask[i] and example.teacher_label_mask[j]:
            pairs.append((i, j))
    s_last, t_last = len(example.student_ids) - 1, len(example.teacher_ids) - 1
    if example.student_ids[s_last] == student_tokenizer.eos_token_id and (
        example.teacher_ids[t_last] == teacher_tokenizer.eos_token_id
    ):
        pairs.append((s_last, t_last))
    return pairs


def _padded_codes(texts: list[str]) -> tuple[Tensor, Tensor]:
    """Code points ``(N, n_max)`` int32 padded with -1, and lengths ``(N,)`` long."""
    width = max([len(text) for text in texts] + [1])
    codes = torch.full((len(texts), width), -1, dtype=torch.int32)
    for row, text in enumerate(texts):
        if text:
            codes[row, : len(text)] = torch.tensor([ord(c) for c in text], dtype=torch.int32)
    return codes, torch.tensor([len(text) for text in texts], dtype=torch.long)


def _batched_edit_distance(queries: list[str], candidates: Tensor, lengths: Tensor) -> Tensor:
    """Edit distances of equal-length ``queries`` (G) to every candidate: ``(G, N)`` int32.

    One DP row per query character over all (query, candidate) pairs at once. The insertion
    recurrence ``D[j] = min(D[j], D[j-1] + 1)`` is ``j + cummin_k(D[k] - k)``, one tensor op.
    Padding (-1) never equals a character, and column ``j`` only reads columns ``<= j``, so
    reading each candidate's row at its own length is exact. In-place int32 ops on two
    buffers: the loop allocates nothing (allocation dominated on busy machines).
    """
    size = len(queries[0])
    width = candidates.shape[1] + 1
    steps = torch.arange(width, dtype=torch.int32)
    row = steps.expand(len(queries), candidates.shape[0], width).contiguous()
    buffer = torch.empty_like(row)
    order = torch.empty(row.shape, dtype=torch.long)
    query_codes = torch.tensor([[ord(c) for c in q] for q in queries], dtype=torch.int32)
    for i in range(size):
        differs = candidates[None, :, :] != query_codes[:, i, None, None]
        torch.add(row[:, :, :-1], differs, out=buffer[:, :, 1:])  # substitute or match
        buffer[:, :, 0] = i + 1
        row.add_(1)  # delete
        torch.minimum(buffer[:, :, 1:], row[:, :, 1:], out=buffer[:, :, 1:])
        buffer.sub_(steps)
        torch.cummin(buffer, dim=2, out=(row, order))  # insert
        row.add_(steps)
    return row.gather(2, lengths[None, :, None].expand(len(queries), -1, 1)).squeeze(2)


def _role_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {role: getattr(tokenizer, f"{role}_token_id", None) for role in _ROLES}
    return {role: value for role, value in ids.items() if isinstance(value, int)}


def vocab_map_key(
    student_tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase
) -> str:
    """Cache key of :func:`build_vocab_map`: both tokenizers' hashes and special-token roles."""
    parts = [
        f"{tokenizer_sha256(tok)}:{sorted(_role_ids(tok).items())}"
        for tok in (student_tokenizer, teacher_tokenizer)
    ]
    return "|".join(parts)


def build_vocab_map(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    *,
    cache: dict[str, Tensor] | None = None,
) -> Tensor:
    """Map every teacher token id to a student token id: ``(V_t,)`` long, ``V_t = len(teacher)``.

    - Special tokens map by role (EOS -> EOS, BOS -> BOS, PAD -> PAD, UNK -> UNK); a special
      token whose role the student lacks, or that has no role, maps to the student special
      token with the same content if any, else to the student's UNK, else its EOS.
    - Other tokens map to the student (non-special) token with the same string, else to the one
      at minimum edit distance between the strings (:func:`token_texts`). Ties go to the
      smallest student id: in BPE the earlier-learned, more frequent piece.

    Vectorised over the vocabularies: a few hundred milliseconds for 1000 x 1000 on two CPU
    cores. With ``cache`` (a dict the caller keeps, e.g. for a job's lifetime), the map is
    stored under :func:`vocab_map_key` and reused.
    """
    key = vocab_map_key(student_tokenizer, teacher_tokenizer) if cache is not None else ""
    if cache is not None and key in cache:
        return cache[key]
    student_texts = token_texts(student_tokenizer, list(range(len(student_tokenizer))))
    teacher_texts = token_texts(teacher_tokenizer, list(range(len(teacher_tokenizer))))
    student_special = set(student_tokenizer.all_special_ids)
    teacher_special = set(teacher_tokenizer.all_special_ids)
    mapping = torch.full((len(teacher_texts),), -1, dtype=torch.long)

    student_roles, teacher_roles = _role_ids(student_tokenizer), _role_ids(teacher_tokenizer)
    special_by_text = {student_texts[i]: i for i in sorted(student_special, reverse=True)}
    fallback = student_roles.get("unk", student_roles.get("eos", 0))
    role_of = {value: role for role, value in teacher_roles.items()}
    for token in teacher_special:
        role = role_of.get(token)
        if role is not None and role in student_roles:
            mapping[token] = student_roles[role]
        else:
            mapping[token] = special_by_text.get(teacher_texts[token], fallback)

    candidate_ids = [i for i in range(len(student_texts)) if i not in student_special]
    exact: dict[str, int] = {}
    for i in reversed(candidate_ids):  # the smallest id wins on duplicate strings
        exact[student_texts[i]] = i
    remaining: dict[int, list[int]] = {}
    for token, text in enumerate(teacher_texts):
        if token in teacher_special:
            continue
        if text in exact:
            mapping[token] = exact[text]
        else:
            remaining.setdefault(len(text), []).append(token)
    if remaining:
        candidates = torch.tensor(candidate_ids, dtype=torch.long)
        codes, lengths = _padded_codes([student_texts[i] for i in candidate_ids])
        for tokens in remaining.values():
            for start in range(0, len(tokens), _QUERY_CHUNK):
                chunk = tokens[start : start + _QUERY_CHUNK]
                distances = _batched_edit_distance(
                    [teacher_texts[t] for t in chunk], codes, lengths
                )
                # argmin returns the first minimum: the smallest student id on ties.
                mapping[torch.tensor(chunk)] = candidates[distances.argmin(dim=1)]
    if cache is not None:
        cache[key] = mapping
    return mapping


def project_teacher_probs(teacher_probs: Tensor, vocab_map: Tensor, student_vocab: int) -> Tensor:
    """``p_mapped[..., v_s] = sum_{v_t: map[v_t] = v_s} p[..., v_t]``: ``(..., V_t)`` ->
    ``(..., V_s)``. Each row still sums to 1."""
    shape = (*teacher_probs.shape[:-1], student_vocab)
    return teacher_probs.new_zeros(shape).index_add(-1, vocab_map, teacher_probs)


def mined_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_index: Tensor,
    teacher_index: Tensor,
    pair_mask: Tensor,
    vocab_map: Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """MinED distillation loss: ``T^2 * KL(p_mapped || q)`` at aligned positions.

    For each pair ``k`` of row ``b``, ``q = softmax(z_s[b, student_index[b, k]] / T)`` and
    ``p_mapped`` is :func:`project_teacher_probs` of ``softmax(z_t[b, teacher_index[b, k]] /
    T)``; the per-pair value is :func:`ml.distillation.divergences.forward_kl` times ``T^2``,
    as ``kd_loss(method="fkl")``, which this equals when both sides share one tokenizer
    (identity map, identical positions).

    Args:
        student_logits: ``(B, S_s, V_s)`` once-shifted logits, any float dtype (float32 math).
        teacher_logits: ``(B, S_t, V_t)`` once-shifted logits.
        student_index: ``(B, K)`` long positions into ``S_s`` (see
            :func:`ml.crossvocab.alignment.pair_positions`).
        teacher_index: ``(B, K)`` long positions into ``S_t``.
        pair_mask: ``(B, K)`` bool, True on real pairs.
        vocab_map: ``(V_t,)`` long student ids (:func:`build_vocab_map`); a model whose logits
            are wider than its tokenizer needs the map padded to ``V_t`` by the caller.
        temperature: ``T > 0``.
        reduction: ``"mean"`` over real pairs (0 if none) or ``"sum"``.

    Returns:
        Scalar float32 tensor.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if vocab_map.shape != (teacher_logits.shape[-1],):
        raise ValueError(
            f"vocab_map {tuple(vocab_map.shape)} must be (V_t,) = ({teacher_logits.shape[-1]},)"
        )
    if not (student_index.shape == teacher_index.shape == pair_mask.shape):
        raise ValueError("student_index, teacher_index and pair_mask must all be (batch, pairs)")
    student = student_logits.gather(
        1, student_index[:, :, None].expand(-1, -1, student_logits.shape[-1])
    )
    teacher = teacher_logits.gather(
        1, teacher_index[:, :, None].expand(-1, -1, teacher_logits.shape[-1])
    )
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    p = F.softmax(teacher.float() / temperature, dim=-1)
    log_p_mapped = project_teacher_probs(p, vocab_map, student_logits.shape[-1]).log()
    per_pair = forward_kl(log_q, log_p_mapped) * temperature**2
    mask = pair_mask.bool()
    total = torch.where(mask, per_pair, torch.zeros_like(per_pair)).sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)
