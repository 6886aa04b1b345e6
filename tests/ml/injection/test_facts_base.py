"""The injection task keeps its promises: injected people are never in the base model's
training rows, held-out questions never share a template with a training pair, and the base is
cached by its settings."""

from __future__ import annotations

from pathlib import Path

from ml.data.tokenizer import train_bpe_tokenizer
from ml.injection.facts_base import (
    _closed_book_rows,
    _open_book_rows,
    build_injection_base,
    held_out_questions,
    injection_split,
    person_document,
    unchanged_questions,
)
from ml.injection.qa import generate_qa_pairs


def test_groups_are_disjoint_and_injected_people_are_never_trained_on() -> None:
    split = injection_split(0, num_people=60, injected=6)
    assert not set(split.known) & set(split.reading)
    assert not set(split.injected) & (set(split.known) | set(split.reading))
    tokenizer = train_bpe_tokenizer([person_document(split.world, p) for p in split.world.people])
    rows = _closed_book_rows(tokenizer, split) + _open_book_rows(
        tokenizer, split, count=200, seed=0
    )
    texts = [tokenizer.decode(row.input_ids) for row in rows]
    for person in split.injected:
        assert not any(person in text for text in texts), person
    assert any(split.reading[0] in text for text in texts)


def test_held_out_questions_use_no_training_question_and_ask_about_injected_people() -> None:
    split = injection_split(0, num_people=60, injected=6)
    documents = [person_document(split.world, p) for p in split.injected]
    training = {pair.question for pair in generate_qa_pairs(documents)}
    held_out = held_out_questions(split)
    assert len(held_out) == 4 * len(split.injected)
    for question, answer, index in held_out:
        assert question not in training
        assert split.injected[index] in question
        assert answer.strip() in documents[index]
    unchanged = unchanged_questions(split)
    assert len(unchanged) == 2 * len(split.known)
    assert all(not any(p in q for p in split.injected) for q, _ in unchanged)


def test_the_base_is_reused_when_its_settings_match(tmp_path: Path) -> None:
    def build() -> dict[str, object]:
        return build_injection_base(
            tmp_path,
            hidden_size=32,
            num_layers=2,
            steps=3,
            batch_size=4,
            vocab_size=400,
            log=lambda _: None,
        )

    first = build()
    weights = next(tmp_path.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    again = build()
    assert again == first
    assert weights.stat().st_mtime_ns == stamp
    assert set(first["scores"]) == {
        "unchanged_closed_book",
        "held_out_open_book",
        "held_out_closed_book",
    }
