"""Teacher, student, tokenizer and records for the speed benchmarks, all built here (no hub).

Speed does not depend on what the models know, so the records are random word sequences over a
fixed lexicon and the teacher is a randomly initialised LLaMA (``teacher_ce_steps`` > 0 trains
it briefly with CE so its distribution is not near uniform, for benchmarks that compare
losses). Every record is long enough to be cut at ``max_length`` by
:func:`ml.data.examples.encode_example`, so every example has exactly ``max_length`` tokens,
about half of them response tokens: both sides of a comparison do the same work per batch.

The directories are cached under ``bench/.cache/speed/`` keyed by the settings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ml.data.examples import collate, encode_example
from ml.data.tokenizer import train_bpe_tokenizer
from ml.distillation.losses import ce_loss
from ml.loading import load_tokenizer, save_model

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "bench" / ".cache" / "speed"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class SpeedSetup:
    vocab_size: int = 8192
    hidden: int = 256
    teacher_layers: int = 6
    student_layers: int = 3
    max_length: int = 128
    records: int = 256
    teacher_ce_steps: int = 0
    seed: int = 0

    def key(self) -> str:
        return (
            f"v{self.vocab_size}-h{self.hidden}-t{self.teacher_layers}-s{self.student_layers}"
            f"-L{self.max_length}-n{self.records}-ce{self.teacher_ce_steps}-seed{self.seed}"
        )


@dataclass(frozen=True)
class SpeedModels:
    teacher_dir: Path
    student_dir: Path
    train: list[tuple[str, str]]
    held_out: list[tuple[str, str]]  # 32 records never trained on


def _lexicon(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 9))))
    return sorted(words)


def _records(rng: random.Random, lexicon: list[str], n: int) -> list[tuple[str, str]]:
    weights = [1.0 / (rank + 10) for rank in range(len(lexicon))]  # Zipf-like word frequencies

    def text(words: int) -> str:
        return " ".join(rng.choices(lexicon, weights=weights, k=words))

    return [(text(120) + "\n", text(90)) for _ in range(n)]


def _llama(tokenizer: PreTrainedTokenizerBase, setup: SpeedSetup, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=setup.hidden,
        intermediate_size=4 * setup.hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(256, setup.max_length),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def build_speed_models(setup: SpeedSetup, cache_dir: Path = CACHE_DIR) -> SpeedModels:
    """Build (or reuse) the teacher and student directories and the records for ``setup``."""
    rng = random.Random(setup.seed)
    lexicon = _lexicon(rng, 6000)
    records = _records(rng, lexicon, setup.records + 32)
    train, held_out = records[: setup.records], records[setup.records :]
    out = cache_dir / setup.key()
    teacher_dir, student_dir = out / "teacher", out / "student"
    if (student_dir / "config.json").exists():
        return SpeedModels(teacher_dir, student_dir, train, held_out)
    tokenizer = train_bpe_tokenizer((p + r for p, r in records), vocab_size=setup.vocab_size)
    torch.manual_seed(setup.seed)
    teacher = _llama(tokenizer, setup, setup.teacher_layers)
    if setup.teacher_ce_steps:
        _train_ce(teacher, tokenizer, train, setup)
    save_model(teacher, tokenizer, teacher_dir)
    student = _llama(tokenizer, setup, setup.student_layers)
    save_model(student, tokenizer, student_dir)
    return SpeedModels(teacher_dir, student_dir, train, held_out)


def _train_ce(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    records: list[tuple[str, str]],
    setup: SpeedSetup,
) -> None:
    """A few CE steps so the teacher's next-token distribution is peaked, not uniform."""
    examples = [encode_example(tokenizer, p, r, setup.max_length) for p, r in records]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    pad_id = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    for step in range(setup.teacher_ce_steps):
        start = (step * 16) % len(examples)
        batch = collate(examples[start : start + 16], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = ce_loss(logits[:, :-1], batch["labels"][:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def encoded_batches(
    models: SpeedModels, records: list[tuple[str, str]], batch_size: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """``records`` encoded and collated in order, ``batch_size`` at a time."""
    tokenizer = load_tokenizer(models.teacher_dir)
    examples = [encode_example(tokenizer, p, r, max_length) for p, r in records]
    pad_id = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    return [
        collate(examples[i : i + batch_size], pad_id)
        for i in range(0, len(examples) - batch_size + 1, batch_size)
    ]
