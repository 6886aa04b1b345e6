"""Question–answer pairs about documents to inject, and the typed input errors of injection.

Prompt distillation (Kujanpää et al. 2024, "Knowledge Injection via Prompt Distillation",
arXiv:2412.14964, Sec. 3) first generates questions about the new documents. The paper asks an
instruction-tuned LLM to write them; the models here are too small for that, so
:func:`generate_qa_pairs` writes *cloze* pairs instead: every run of capitalised words that does
not open a sentence (a name, a place, an organisation) becomes an answer, and the sentence up to
it becomes the question. The generator is model-free and deterministic, so a job that sends only
documents always trains on the same pairs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\S+")


class InjectionInputError(ValueError):
    """A bad input to injection; ``field`` is the spec path at fault (``method.params.steps``,
    ``lora.r``, ``documents[3]``), so the service can answer problem+json naming it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class QAPair:
    """A question, its answer as the continuation that follows it (leading space included, as
    the facts world writes answers), and the index of the document it is about (the teacher's
    context); ``None`` lets :func:`assign_documents` pick it."""

    question: str
    answer: str
    document: int | None = None


def _capitalised(word: str) -> bool:
    return word[:1].isupper()


def _strip_punctuation(word: str) -> str:
    return word.rstrip(".,;:!?")


def sentence_cloze_pairs(sentence: str) -> list[tuple[str, str]]:
    """``(question, " answer")`` for each maximal run of capitalised words in ``sentence`` that
    does not start at its first word; a run ends at a word carrying punctuation."""
    words = [(m.start(), m.group()) for m in _WORD.finditer(sentence)]
    pairs: list[tuple[str, str]] = []
    i = 1
    while i < len(words):
        if not _capitalised(words[i][1]) or _capitalised(words[i - 1][1]):
            i += 1
            continue
        end = i  # extend the run while the word has no punctuation and the next is capitalised
        while (
            end + 1 < len(words)
            and words[end][1] == _strip_punctuation(words[end][1])
            and _capitalised(words[end + 1][1])
        ):
            end += 1
        answer = " ".join(_strip_punctuation(words[j][1]) for j in range(i, end + 1))
        question = sentence[: words[i][0]].rstrip()
        if answer and question:
            pairs.append((question, " " + answer))
        i = end + 1
    return pairs


def generate_qa_pairs(
    documents: Sequence[str], *, max_pairs_per_document: int | None = None
) -> list[QAPair]:
    """Cloze question–answer pairs for every document, in document order.

    Each document is split into sentences; each sentence gives :func:`sentence_cloze_pairs`.
    ``"Ana Rel was born in Lumo, a city in Kesta."`` gives ``("Ana Rel was born in", " Lumo")``
    and ``("Ana Rel was born in Lumo, a city in", " Kesta")``.

    Raises:
        InjectionInputError: no documents, an empty document (``documents[i]``), or no pair at
            all (nothing capitalised after a sentence's first word).
    """
    if not documents:
        raise InjectionInputError("documents", "at least one document is needed")
    if max_pairs_per_document is not None and max_pairs_per_document < 1:
        raise InjectionInputError("max_pairs_per_document", "must be >= 1")
    pairs: list[QAPair] = []
    for index, document in enumerate(documents):
        if not document.strip():
            raise InjectionInputError(f"documents[{index}]", "the document is empty")
        found = [
            QAPair(question, answer, index)
            for sentence in _SENTENCE_END.split(document.strip())
            for question, answer in sentence_cloze_pairs(sentence)
        ]
        pairs += found[:max_pairs_per_document]
    if not pairs:
        raise InjectionInputError(
            "documents", "no question could be generated (no names after a sentence's start)"
        )
    return pairs


def _words(text: str) -> set[str]:
    return {_strip_punctuation(w).lower() for w in text.split()} - {""}


def assign_documents(pairs: Sequence[QAPair], documents: Sequence[str]) -> list[QAPair]:
    """Give every pair without a document the one sharing most words with its question (ties:
    the first such document): the teacher's context for a question a job sent on its own.

    Raises:
        InjectionInputError: a pair names a document index outside ``documents``
            (``qa_pairs[i].document``), or has an empty question or answer.
    """
    vocabularies = [_words(d) for d in documents]
    assigned: list[QAPair] = []
    for i, pair in enumerate(pairs):
        if not pair.question.strip():
            raise InjectionInputError(f"qa_pairs[{i}].question", "the question is empty")
        if not pair.answer.strip():
            raise InjectionInputError(f"qa_pairs[{i}].answer", "the answer is empty")
        if pair.document is not None:
            if not 0 <= pair.document < len(documents):
                raise InjectionInputError(
                    f"qa_pairs[{i}].document",
                    f"document index {pair.document} outside 0..{len(documents) - 1}",
                )
            assigned.append(pair)
            continue
        question = _words(pair.question)
        overlaps = [len(question & vocabulary) for vocabulary in vocabularies]
        assigned.append(QAPair(pair.question, pair.answer, overlaps.index(max(overlaps))))
    return assigned
