"""Cloze question generation and document assignment."""

from __future__ import annotations

import pytest

from ml.injection.qa import (
    InjectionInputError,
    QAPair,
    assign_documents,
    generate_qa_pairs,
    sentence_cloze_pairs,
)


def test_each_capitalised_run_after_the_first_word_becomes_an_answer() -> None:
    sentence = "Ana Rel was born in Lumo, a city in Kesta."
    assert sentence_cloze_pairs(sentence) == [
        ("Ana Rel was born in", " Lumo"),
        ("Ana Rel was born in Lumo, a city in", " Kesta"),
    ]


def test_a_multi_word_name_is_one_answer_and_the_sentence_subject_is_none() -> None:
    sentence = "Today Ana Rel works for Zed Corp, which is headquartered in Lumo."
    assert sentence_cloze_pairs(sentence) == [
        ("Today Ana Rel works for", " Zed Corp"),
        ("Today Ana Rel works for Zed Corp, which is headquartered in", " Lumo"),
    ]


def test_pairs_follow_the_documents_and_name_them() -> None:
    documents = ["Ana Rel was born in Lumo. Ana Rel works for Zed Corp.", "Bo Kai was born in Tir."]
    pairs = generate_qa_pairs(documents)
    assert pairs == [
        QAPair("Ana Rel was born in", " Lumo", 0),
        QAPair("Ana Rel works for", " Zed Corp", 0),
        QAPair("Bo Kai was born in", " Tir", 1),
    ]
    assert generate_qa_pairs(documents, max_pairs_per_document=1) == [pairs[0], pairs[2]]


@pytest.mark.parametrize(
    ("documents", "field"),
    [
        ([], "documents"),
        (["Ana was born in Lumo.", "  "], "documents[1]"),
        (["no names."], "documents"),
    ],
)
def test_bad_documents_name_the_field(documents: list[str], field: str) -> None:
    with pytest.raises(InjectionInputError) as caught:
        generate_qa_pairs(documents)
    assert caught.value.field == field


def test_a_pair_without_a_document_gets_the_most_overlapping_one() -> None:
    documents = ["Ana Rel was born in Lumo.", "Bo Kai works for Zed Corp."]
    pairs = [QAPair("The employer of Bo Kai is", " Zed Corp"), QAPair("Ana Rel came from", " Lumo")]
    assert [p.document for p in assign_documents(pairs, documents)] == [1, 0]


@pytest.mark.parametrize(
    ("pair", "field"),
    [
        (QAPair("Ana was born in", " Lumo", 2), "qa_pairs[0].document"),
        (QAPair(" ", " Lumo"), "qa_pairs[0].question"),
        (QAPair("Ana was born in", "  "), "qa_pairs[0].answer"),
    ],
)
def test_bad_pairs_name_the_field(pair: QAPair, field: str) -> None:
    with pytest.raises(InjectionInputError) as caught:
        assign_documents([pair], ["Ana was born in Lumo.", "Bo works for Zed."])
    assert caught.value.field == field
