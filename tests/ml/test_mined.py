from __future__ import annotations

import itertools
import math

import pytest
import torch

from ml.crossvocab.alignment import collate_cross_examples, encode_cross_example
from ml.crossvocab.mined import (
    build_vocab_map,
    edit_distance,
    min_edit_alignment,
    mined_loss,
    mined_pairs,
    project_teacher_probs,
    token_texts,
    vocab_map_key,
)
from ml.data.formatting import PROMPT_TEMPLATE
from ml.distillation.losses import kd_loss
from tests.ml.crossvocab_fixtures import PROMPT, RESPONSE, student_tokenizer, teacher_tokenizer


def _path_cost(path: list[tuple[int, int]], a: list[str], b: list[str]) -> int:
    return sum(edit_distance(a[i], b[j]) for i, j in path)


def _all_warping_paths(rows: int, cols: int) -> list[list[tuple[int, int]]]:
    """Every monotone path from (0, 0) to (rows-1, cols-1) with unit steps."""
    paths: list[list[tuple[int, int]]] = []

    def walk(path: list[tuple[int, int]]) -> None:
        i, j = path[-1]
        if (i, j) == (rows - 1, cols - 1):
            paths.append(list(path))
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            if i + di < rows and j + dj < cols:
                walk([*path, (i + di, j + dj)])

    walk([(0, 0)])
    return paths


def test_edit_distance_by_hand() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("café", "cafe") == 1


def test_alignment_table_of_a_hand_made_pair() -> None:
    student = ["The", " ca", "t", " sat", "."]
    teacher = ["The", " cat", " s", "at", "."]
    # The | " ca"~" cat" (1) | "t"~" s" (2) | " sat"~"at" (2) | "." : the diagonal, cost 5.
    assert min_edit_alignment(student, teacher) == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    # One coarse teacher token takes all the student's pieces.
    assert min_edit_alignment(["n", "a", "\udcc3", "\udcaf", "ve"], ["na\udcc3\udcafve"]) == [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
    ]
    assert min_edit_alignment([], ["a"]) == []


@pytest.mark.parametrize("seed", range(4))
def test_alignment_is_a_minimum_cost_warping_path(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    pieces = ["a", "ab", "b", "ba", " c", "c", "abc", "."]

    def draw(n: int) -> list[str]:
        return [pieces[int(k)] for k in torch.randint(len(pieces), (n,), generator=generator)]

    student, teacher = draw(4), draw(3)
    path = min_edit_alignment(student, teacher)
    best = min(_path_cost(p, student, teacher) for p in _all_warping_paths(4, 3))
    assert path in _all_warping_paths(4, 3)
    assert _path_cost(path, student, teacher) == best


def test_vocab_map_of_identical_vocabularies_is_the_identity() -> None:
    tokenizer = student_tokenizer()
    mapping = build_vocab_map(tokenizer, tokenizer)
    assert torch.equal(mapping, torch.arange(len(tokenizer)))


def test_vocab_map_takes_exact_strings_then_the_nearest_by_edit_distance() -> None:
    student, teacher = student_tokenizer(), teacher_tokenizer()
    cache: dict[str, torch.Tensor] = {}
    mapping = build_vocab_map(student, teacher, cache=cache)
    assert mapping.shape == (len(teacher),) and mapping.dtype == torch.long
    assert build_vocab_map(student, teacher, cache=cache) is mapping
    assert list(cache) == [vocab_map_key(student, teacher)]
    for role in ("pad", "bos", "eos", "unk"):
        assert mapping[getattr(teacher, f"{role}_token_id")] == getattr(student, f"{role}_token_id")
    s_texts = token_texts(student, list(range(len(student))))
    t_texts = token_texts(teacher, list(range(len(teacher))))
    specials = set(student.all_special_ids)
    candidates = [i for i in range(len(student)) if i not in specials]
    unmatched = [t for t in range(4, len(teacher)) if t_texts[t] not in s_texts]
    assert len(unmatched) > 100  # the two vocabularies really differ
    for token in range(4, len(teacher)):
        if t_texts[token] in s_texts:
            assert s_texts[int(mapping[token])] == t_texts[token]
    for token in unmatched[::8]:  # brute force: smallest distance, then the smallest id
        distances = [edit_distance(t_texts[token], s_texts[i]) for i in candidates]
        assert int(mapping[token]) == candidates[distances.index(min(distances))]
    assert s_texts[int(mapping[t_texts.index(" Response")])] == " Response"


def test_projection_sums_the_mapped_probabilities_to_one() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 7, generator=generator), dim=-1)
    vocab_map = torch.tensor([0, 2, 2, 1, 4, 4, 4])
    projected = project_teacher_probs(probs, vocab_map, 5)
    assert projected.shape == (2, 3, 5)
    assert torch.allclose(projected.sum(dim=-1), torch.ones(2, 3))
    assert torch.allclose(projected[..., 2], probs[..., 1] + probs[..., 2])
    assert torch.equal(projected[..., 3], torch.zeros(2, 3))


def test_a_value_by_hand() -> None:
    student = torch.tensor([0.75, 0.25]).log().reshape(1, 1, 2)
    teacher = torch.tensor([0.5, 0.3, 0.2]).log().reshape(1, 1, 3)
    index, mask = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
    loss = mined_loss(student, teacher, index, index, mask, torch.tensor([0, 1, 1]))
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_forward_kl_with_one_tokenizer(temperature: float, reduction: str) -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 5, 9, generator=generator)
    teacher = torch.randn(2, 5, 9, generator=generator)
    mask = torch.rand(2, 5, generator=generator) > 0.3
    positions = torch.arange(5).expand(2, 5)
    loss = mined_loss(
        student,
        teacher,
        positions,
        positions,
        mask,
        torch.arange(9),
        temperature=temperature,
        reduction=reduction,
    )
    expected = kd_loss(
        student, teacher, method="fkl", mask=mask, temperature=temperature, reduction=reduction
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradients_reach_only_paired_positions_and_all_masked_is_zero() -> None:
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(1, 4, 5, generator=generator, requires_grad=True)
    teacher = torch.randn(1, 3, 8, generator=generator)
    vocab_map = torch.tensor([0, 1, 1, 2, 3, 4, 4, 0])
    student_index, teacher_index = torch.tensor([[1, 3]]), torch.tensor([[0, 2]])
    loss = mined_loss(
        student, teacher, student_index, teacher_index, torch.tensor([[True, True]]), vocab_map
    )
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad[0, [0, 2]].abs().sum().item() == 0.0
    assert student.grad[0, [1, 3]].abs().sum(dim=-1).min().item() > 0.0
    # d KL / d z_s = q - p_mapped (T = 1): each row's gradient sums to 0.
    assert torch.allclose(student.grad.sum(dim=-1), torch.zeros(1, 4), atol=1e-6)
    nothing = torch.zeros(1, 2, dtype=torch.bool)
    zero = mined_loss(student, teacher, student_index, teacher_index, nothing, vocab_map)
    assert zero.item() == 0.0 and not math.isnan(zero.item())


def test_mined_pairs_on_a_real_example_feed_the_loss() -> None:
    student, teacher = student_tokenizer(), teacher_tokenizer()
    examples = [
        encode_cross_example(
            student, teacher, PROMPT_TEMPLATE.format(prompt="Reverse cat."), "tac, the cat.", 64
        ),
        encode_cross_example(student, teacher, PROMPT, RESPONSE, 64),
    ]
    pairs = [mined_pairs(example, student, teacher) for example in examples]
    for example, example_pairs in zip(examples, pairs, strict=True):
        assert example_pairs[-1] == (len(example.student_ids) - 1, len(example.teacher_ids) - 1)
        students = [i for i, _ in example_pairs]
        assert students == sorted(set(students))  # each student token distilled at most once
        assert all(example.student_label_mask[i] for i in students)
        assert all(example.teacher_label_mask[j] for _, j in example_pairs)
    s_texts = token_texts(student, examples[0].student_ids)
    t_texts = token_texts(teacher, examples[0].teacher_ids)
    assert [(s_texts[i], t_texts[j]) for i, j in pairs[0]][:3] == [
        ("c", "tac"),
        (",", ","),
        (" the", " the"),
    ]
    batch = collate_cross_examples(examples, student_pad_id=0, teacher_pad_id=0, pairs=pairs)
    generator = torch.Generator().manual_seed(3)
    s_logits = torch.randn(*batch["student_input_ids"].shape, len(student), generator=generator)
    t_logits = torch.randn(*batch["teacher_input_ids"].shape, len(teacher), generator=generator)
    s_logits.requires_grad_(True)
    loss = mined_loss(
        s_logits[:, :-1],
        t_logits[:, :-1],
        batch["student_index"],
        batch["teacher_index"],
        batch["pair_mask"],
        build_vocab_map(student, teacher),
    )
    loss.backward()
    assert loss.item() > 0 and s_logits.grad is not None
    assert torch.isfinite(s_logits.grad).all()


def test_rejects_a_map_of_the_wrong_size() -> None:
    logits, index = torch.zeros(1, 2, 3), torch.zeros(1, 1, dtype=torch.long)
    mask = torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="vocab_map"):
        mined_loss(logits, logits, index, index, mask, torch.arange(2))
    with pytest.raises(ValueError, match="reduction"):
        mined_loss(logits, logits, index, index, mask, torch.arange(3), reduction="none")


def test_all_warping_paths_helper_counts_delannoy_paths() -> None:
    # Sanity of the brute force itself: D(2, 1) = 5 paths on a 3 x 2 grid.
    assert len(_all_warping_paths(3, 2)) == 5
    assert list(itertools.chain.from_iterable(_all_warping_paths(1, 1))) == [(0, 0)]
