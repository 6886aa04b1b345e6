"""Two byte-level BPE tokenizers with different vocabularies, trained here on shared text.

The student tokenizer (vocab 300) sees half of a synthetic instruction set plus a few
multibyte lines; the teacher tokenizer (vocab 700) sees all of it plus extra multibyte-heavy
lines, so it learns whole-character and whole-word merges ("naïve", "東京", "🙂") that the
student splits into bytes. Each is trained in milliseconds and built once per process.
"""

from __future__ import annotations

from functools import cache

from transformers import PreTrainedTokenizerFast

from ml.data.formatting import PROMPT_TEMPLATE, to_prompt_response
from ml.data.instructions import generate_instruction_records
from ml.data.tokenizer import EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, train_bpe_tokenizer

BASE_TEXTS = [
    "### Instruction:\nReverse the word cat.\n### Response:\ntac",
    "### Instruction:\nSay hello politely.\n### Response:\nHello, dear friend.",
    "The naïve café in 東京 serves tea 🙂",
    "Write dog in capital letters. DOG",
    "What is 3 plus 4? 7",
    "東京 is big. 京都 is old. café au lait",
]
TEACHER_EXTRA = ["東京 東京 naïve naïve 🙂🙂 café", "Instruction Response instruction response"]

MULTIBYTE_TEXT = "naïve café 東京 🙂"
PROMPT = PROMPT_TEMPLATE.format(prompt="Say it: naïve café")
RESPONSE = "naïve café 東京 🙂"


@cache
def _instruction_texts() -> list[str]:
    return ["".join(to_prompt_response(r)) for r in generate_instruction_records(300, seed=1)]


@cache
def student_tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(_instruction_texts()[:150] + BASE_TEXTS * 4, vocab_size=300)


@cache
def teacher_tokenizer() -> PreTrainedTokenizerFast:
    texts = _instruction_texts() + BASE_TEXTS * 4 + TEACHER_EXTRA * 8
    return train_bpe_tokenizer(texts, vocab_size=700)


@cache
def teacher_tokenizer_without_bos() -> PreTrainedTokenizerFast:
    """The teacher's vocabulary and merges, wrapped with no BOS token (``bos_token_id is None``)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=teacher_tokenizer().backend_tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )
