from __future__ import annotations

import pytest
import torch

from ml.crossvocab.alignment import (
    collate_cross_examples,
    encode_cross_example,
    encode_with_byte_offsets,
    exact_span_matches,
    pair_positions,
    span_overlap_matrix,
    token_byte_strings,
)
from ml.data.examples import IGNORE_INDEX
from ml.data.formatting import PROMPT_TEMPLATE
from tests.ml.crossvocab_fixtures import (
    MULTIBYTE_TEXT,
    PROMPT,
    RESPONSE,
    student_tokenizer,
    teacher_tokenizer,
    teacher_tokenizer_without_bos,
)

HAND_PROMPT = PROMPT_TEMPLATE.format(prompt="Reverse cat.")
HAND_RESPONSE = "tac, the naïve cat."


def _text_ids(tokenizer, ids):  # type: ignore[no-untyped-def]
    return [i for i in ids if i not in tokenizer.all_special_ids]


def _pieces(tokenizer, ids, offsets):  # type: ignore[no-untyped-def]
    return list(zip(tokenizer.convert_ids_to_tokens(ids), offsets, strict=True))


@pytest.mark.parametrize("text", [MULTIBYTE_TEXT, PROMPT + RESPONSE, "Reverse the word cat.", ""])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_byte_spans_tile_the_utf8_text(text: str, side: str) -> None:
    tokenizer = student_tokenizer() if side == "student" else teacher_tokenizer()
    ids, offsets = encode_with_byte_offsets(tokenizer, text, add_bos=True)
    data = text.encode("utf-8")
    assert ids[0] == tokenizer.bos_token_id and offsets[0] == (0, 0)
    ends = [0] + [end for _, end in offsets[1:]]
    assert [start for start, _ in offsets[1:]] == ends[:-1]  # contiguous, no gaps or overlaps
    assert ends[-1] == len(data)
    assert tokenizer.decode(ids[1:]) == text


def test_a_multibyte_character_split_differently_aligns_on_bytes() -> None:
    student, teacher = student_tokenizer(), teacher_tokenizer()
    s_ids, s_off = encode_with_byte_offsets(student, MULTIBYTE_TEXT, add_bos=False)
    t_ids, t_off = encode_with_byte_offsets(teacher, MULTIBYTE_TEXT, add_bos=False)
    # "naïve café 東京 🙂": ï is bytes 2-3, 東 bytes 13-15, 🙂 bytes 20-23.
    assert _pieces(student, s_ids, s_off)[:4] == [
        ("n", (0, 1)),
        ("a", (1, 2)),
        ("Ã", (2, 3)),  # first byte of ï
        ("¯", (3, 4)),  # second byte of ï
    ]
    assert _pieces(student, s_ids, s_off)[11:14] == [
        ("æ", (13, 14)),
        ("Ŀ", (14, 15)),
        ("±", (15, 16)),
    ]
    assert _pieces(teacher, t_ids, t_off) == [
        ("n", (0, 1)),
        ("aÃ", (1, 3)),  # ï cut after its first byte, which the student has alone
        ("¯ve", (3, 6)),
        ("ĠcafÃ©", (6, 12)),
        ("ĠæĿ±äº¬", (12, 19)),
        ("ĠðŁĻĤ", (19, 24)),
    ]
    assert exact_span_matches(s_off, t_off) == [(0, 0)]
    overlap = span_overlap_matrix(s_off, t_off)
    assert overlap.shape == (len(s_ids), len(t_ids))
    assert overlap.sum(dim=1).tolist() == [float(b - a) for a, b in s_off]
    assert overlap.sum(dim=0).tolist() == [float(b - a) for a, b in t_off]
    assert overlap[2].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # "Ã" of ï inside "aÃ"
    assert overlap[11:14, 4].tolist() == [1.0, 1.0, 1.0]  # 東's bytes inside " 東京"


def test_hand_written_spans() -> None:
    student = [(0, 0), (0, 2), (2, 3), (3, 5), (5, 5)]
    teacher = [(0, 2), (2, 5), (5, 5)]
    assert exact_span_matches(student, teacher) == [(1, 0)]
    assert span_overlap_matrix(student, teacher).tolist() == [
        [0.0, 0.0, 0.0],
        [2.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 2.0, 0.0],
        [0.0, 0.0, 0.0],
    ]


def test_alignment_table_of_a_hand_made_example() -> None:
    student, teacher = student_tokenizer(), teacher_tokenizer()
    example = encode_cross_example(student, teacher, HAND_PROMPT, HAND_RESPONSE, max_length=64)
    s_tokens = student.convert_ids_to_tokens(example.student_ids)
    t_tokens = teacher.convert_ids_to_tokens(example.teacher_ids)
    assert s_tokens[17:] == [
        "Ċ", "t", "a", "c", ",", "Ġthe", "Ġ", "n", "a", "Ã", "¯", "v", "e", "Ġca", "t", ".",
        "<eos>",
    ]  # fmt: skip
    assert t_tokens[12:] == ["Ċ", "tac", ",", "Ġthe", "ĠnaÃ¯ve", "Ġcat", ".", "<eos>"]
    assert example.response_start == len(HAND_PROMPT.encode("utf-8")) == 44
    matches = exact_span_matches(example.student_offsets, example.teacher_offsets)
    assert [(s_tokens[i], t_tokens[j]) for i, j in matches] == [
        ("###", "###"),
        ("ĠInstruction", "ĠInstruction"),
        (":", ":"),
        ("Ċ", "Ċ"),
        (".", "."),
        ("Ċ", "Ċ"),
        ("###", "###"),
        ("ĠResponse", "ĠResponse"),
        (":", ":"),
        ("Ċ", "Ċ"),
        (",", ","),
        ("Ġthe", "Ġthe"),
        (".", "."),
    ]
    # Response pairs only, plus the two EOS; BOS (index 0 on both sides) never pairs.
    assert example.aligned_pairs == [(21, 14), (22, 15), (32, 18), (33, 19)]


def test_bos_on_one_side_only_is_ignored_by_the_alignment() -> None:
    student, teacher = student_tokenizer(), teacher_tokenizer()
    with_bos = encode_cross_example(student, teacher, HAND_PROMPT, HAND_RESPONSE, 64)
    without = encode_cross_example(
        student, teacher_tokenizer_without_bos(), HAND_PROMPT, HAND_RESPONSE, 64
    )
    assert without.teacher_ids == with_bos.teacher_ids[1:]
    assert without.teacher_offsets == with_bos.teacher_offsets[1:]
    assert without.aligned_pairs == [(i, j - 1) for i, j in with_bos.aligned_pairs]
    assert all(i > 0 for i, _ in without.aligned_pairs)  # the student's BOS stays unpaired
    with pytest.raises(ValueError, match="no BOS"):
        encode_with_byte_offsets(teacher_tokenizer_without_bos(), "cat", add_bos=True)


@pytest.mark.parametrize(("prompt", "response"), [(HAND_PROMPT, HAND_RESPONSE), (PROMPT, RESPONSE)])
def test_response_masks_cover_exactly_the_response_bytes(prompt: str, response: str) -> None:
    example = encode_cross_example(student_tokenizer(), teacher_tokenizer(), prompt, response, 64)
    n_bytes = len((prompt + response).encode("utf-8"))
    start = example.response_start
    sides = [
        (example.student_offsets, example.student_label_mask),
        (example.teacher_offsets, example.teacher_label_mask),
    ]
    for offsets, mask in sides:
        spans = [span for span, keep in zip(offsets, mask, strict=True) if keep]
        covered = {b for a, e in spans for b in range(a, e)}
        assert covered == set(range(start, n_bytes))
        assert not any(keep for (_, e), keep in zip(offsets, mask, strict=True) if 0 < e <= start)
        assert mask[-1] and offsets[-1] == (n_bytes, n_bytes)  # EOS is a response token
    assert example.student_labels == [
        t if keep else IGNORE_INDEX
        for t, keep in zip(example.student_ids, example.student_label_mask, strict=True)
    ]


@pytest.mark.parametrize("max_length", [3, 6, 10, 16, 24, 48])
def test_truncation_keeps_the_same_bytes_on_both_sides(max_length: int) -> None:
    student, teacher = student_tokenizer(), teacher_tokenizer()
    example = encode_cross_example(student, teacher, PROMPT, RESPONSE, max_length)
    text = (PROMPT + RESPONSE).encode("utf-8")
    response = RESPONSE.encode("utf-8")
    # Compare bytes: a cut may fall inside a multibyte character (a boundary of both sides).
    s_bytes = b"".join(token_byte_strings(student, _text_ids(student, example.student_ids)))
    t_bytes = b"".join(token_byte_strings(teacher, _text_ids(teacher, example.teacher_ids)))
    assert len(example.student_ids) <= max_length and len(example.teacher_ids) <= max_length
    assert s_bytes == t_bytes and s_bytes in text
    has_eos = example.student_ids[-1] == student.eos_token_id
    assert has_eos == (example.teacher_ids[-1] == teacher.eos_token_id)
    assert has_eos == s_bytes.endswith(response)
    if max_length >= 24:  # the student needs 22 + 2 tokens for the response: prompt cut left
        assert has_eos and text.endswith(s_bytes)
    else:  # the response does not fit the student: cut on the right, no EOS
        assert not has_eos and response not in s_bytes


def test_collate_cross_examples_shifts_the_pairs_to_logit_positions() -> None:
    student, teacher = student_tokenizer(), teacher_tokenizer()
    examples = [
        encode_cross_example(student, teacher, HAND_PROMPT, HAND_RESPONSE, 64),
        encode_cross_example(student, teacher, PROMPT, RESPONSE, 64),
    ]
    batch = collate_cross_examples(examples, student_pad_id=0, teacher_pad_id=0)
    width_s = max(len(e.student_ids) for e in examples)
    width_t = max(len(e.teacher_ids) for e in examples)
    assert batch["student_input_ids"].shape == (2, width_s)
    assert batch["teacher_labels"].shape == (2, width_t)
    assert batch["student_index"].tolist()[0] == [i - 1 for i, _ in examples[0].aligned_pairs]
    assert batch["teacher_index"].tolist()[0] == [j - 1 for _, j in examples[0].aligned_pairs]
    assert batch["pair_mask"].sum(dim=1).tolist() == [len(e.aligned_pairs) for e in examples]
    # Every paired position predicts a response token on both sides.
    for row in range(2):
        keep = batch["pair_mask"][row]
        s_next = batch["student_labels"][row, batch["student_index"][row, keep] + 1]
        t_next = batch["teacher_labels"][row, batch["teacher_index"][row, keep] + 1]
        assert bool((s_next != IGNORE_INDEX).all()) and bool((t_next != IGNORE_INDEX).all())


def test_pair_positions_drop_unpredictable_first_tokens_and_pad() -> None:
    student_index, teacher_index, mask = pair_positions([[(0, 0), (3, 2)], []])
    assert student_index.tolist() == [[2], [0]]
    assert teacher_index.tolist() == [[1], [0]]
    assert mask.tolist() == [[True], [False]]
    assert torch.equal(pair_positions([[]])[2], torch.zeros((1, 1), dtype=torch.bool))
