"""A small base model that answers from its context, and the injection task on the facts world.

Knowledge injection is only measurable when the base model can *read*: prompt distillation's
teacher is the base model with the document in its context, so it must answer questions about a
document it has never seen (Kujanpää et al. 2024 rely on an instruction-tuned LLM for that). The
model here is trained for a few CPU minutes on a mix of

* closed-book text about the KNOWN people of :func:`ml.data.facts_world.build_world` (every
  paraphrase of every fact, two-hop sentences, and their documents), and
* open-book examples ``document + "\\n" + question → answer`` about READING people, with every
  question template (loss on the answer only); each example draws the person's city and company
  afresh, so the only way to answer is to read the document,

so it learns to answer from context. The documents to inject are about INJECTED people, never in
its training text. :func:`injection_split` fixes the three groups; :func:`held_out_questions`
asks about injected people with templates no training pair uses; :func:`unchanged_questions`
asks about known people (facts an injection must leave alone).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ml.data.facts_world import (
    TEMPLATES,
    FactsWorld,
    build_world,
    training_sentences,
)
from ml.data.tokenizer import train_bpe_tokenizer
from ml.distillation.losses import ce_loss
from ml.distillation.schedule import build_scheduler
from ml.injection.answer_spans import AnswerRow, answer_logits, text_answer_row
from ml.loading import save_model

MANIFEST = "injection_base.json"
#: Templates asked about injected people at evaluation; training pairs (the documents' cloze
#: questions) never use them. Index 0 of each relation is left out: "X was born in" is a
#: document's own cloze question.
HELD_OUT_TEMPLATES: dict[str, tuple[int, ...]] = {"born_in": (1, 2), "works_for": (1, 2)}


@dataclass(frozen=True)
class InjectionSplit:
    world: FactsWorld
    known: list[str]
    reading: list[str]
    injected: list[str]


def injection_split(seed: int = 0, *, num_people: int = 200, injected: int = 24) -> InjectionSplit:
    """Known people (closed-book training), reading people (open-book training) and injected
    people (never in training), from one seeded world."""
    world = build_world(seed, num_people=num_people, unseen_fraction=0.7)
    unseen = world.unseen_people[:]
    random.Random(seed + 1).shuffle(unseen)
    if injected >= len(unseen):
        raise ValueError(f"{injected} injected people asked, the world has {len(unseen)} unseen")
    return InjectionSplit(world, world.known_people, unseen[injected:], unseen[:injected])


def person_document(world: FactsWorld, person: str) -> str:
    """Two sentences, ``born_in`` then ``works_for`` (shorter than
    :func:`ml.data.facts_world.entity_documents`, so a CPU-trained base model reads it cheaply;
    its cloze questions are the first template of each relation)."""
    city, company = world.person_city[person], world.person_company[person]
    return f"{person} was born in {city}. {person} works for {company}."


def _answer(world: FactsWorld, person: str, relation: str) -> str:
    return " " + (
        world.person_city[person] if relation == "born_in" else world.person_company[person]
    )


def held_out_questions(split: InjectionSplit) -> list[tuple[str, str, int]]:
    """``(question, " answer", index of the person's document in split.injected)``."""
    out = []
    for index, person in enumerate(split.injected):
        for relation, template_ids in HELD_OUT_TEMPLATES.items():
            for t in template_ids:
                question = TEMPLATES[relation][t].format(s=person)
                out.append((question, _answer(split.world, person, relation), index))
    return out


def unchanged_questions(split: InjectionSplit) -> list[tuple[str, str]]:
    """The first-template ``born_in`` and ``works_for`` questions about every known person."""
    return [
        (TEMPLATES[relation][0].format(s=person), _answer(split.world, person, relation))
        for person in split.known
        for relation in ("born_in", "works_for")
    ]


def _open_book_rows(
    tokenizer: Any, split: InjectionSplit, *, count: int, seed: int
) -> list[AnswerRow]:
    """``count`` reading examples, each a READING person with a city and a company drawn afresh
    (so the same name states different facts in different examples: memorising a name's facts
    does not help, only reading the document does) and one question of any template."""
    rng = random.Random(seed)
    world = split.world
    rows = []
    for _ in range(count):
        person = rng.choice(split.reading)
        city, company = rng.choice(world.cities), rng.choice(world.companies)
        document = f"{person} was born in {city}. {person} works for {company}."
        relation = rng.choice(("born_in", "works_for"))
        question = rng.choice(TEMPLATES[relation]).format(s=person)
        answer = " " + (city if relation == "born_in" else company)
        rows.append(text_answer_row(tokenizer, question, answer, document=document))
    return rows


def _closed_book_rows(tokenizer: Any, split: InjectionSplit) -> list[AnswerRow]:
    texts = training_sentences(split.world)
    texts += [person_document(split.world, p) for p in split.known] * 3
    bos, eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    rows = []
    for text in texts:
        ids = list(tokenizer.encode(text, add_special_tokens=False)) + [eos]
        rows.append(AnswerRow([bos] + ids, 1, len(ids)))
    return rows


def build_injection_base(
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 96,
    num_layers: int = 3,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 3e-3,
    vocab_size: int = 1024,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse, when ``out_dir`` holds one built with the same settings) the base model
    and return its manifest: settings, final loss, seconds, and its scores (see
    :func:`base_scores`)."""
    from ml.injection.evaluation import score_pairs

    out_dir = Path(out_dir)
    settings = {
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "vocab_size": vocab_size,
    }
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("settings") == settings:
            return manifest
    started = time.perf_counter()
    torch.manual_seed(seed)
    split = injection_split(seed)
    world = split.world
    corpus = training_sentences(world, include_unseen=True)
    corpus += [person_document(world, p) for p in world.people]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=vocab_size)
    pad_id = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            pad_token_id=pad_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    closed = _closed_book_rows(tokenizer, split)
    rows = closed * 3 + _open_book_rows(tokenizer, split, count=4000, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = build_scheduler(
        optimizer, warmup_steps=max(1, steps // 20), total_steps=steps, schedule="cosine"
    )
    rng = random.Random(seed)
    order: list[int] = []
    recent: list[float] = []
    model.train()
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        batch = [rows[i] for i in order[:batch_size]]
        del order[:batch_size]
        logits, mask = answer_logits(model, batch, pad_id)
        labels = torch.full(mask.shape, -100, dtype=torch.long)
        for b, row in enumerate(batch):
            labels[b, : row.answer_length] = torch.tensor(row.answer_ids)
        loss = ce_loss(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [float(loss.detach())])[-20:]
        if step % 100 == 0 or step == steps:
            log(f"step {step}/{steps} loss {sum(recent) / len(recent):.4f}")
    model.eval()
    save_model(model, tokenizer, out_dir)
    manifest = {
        "settings": settings,
        "final_loss": sum(recent) / len(recent),
        "seconds": time.perf_counter() - started,
        "rows": len(rows),
        "scores": base_scores(model, tokenizer, split, score_pairs),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def base_scores(model: Any, tokenizer: Any, split: InjectionSplit, score: Any) -> dict[str, Any]:
    """The checks injection needs before it can be measured: known facts closed book (what
    must not change), held-out questions on injected people with their document in context
    (the teacher: should be high) and without it (the student before training: near zero)."""
    held_out = held_out_questions(split)
    documents = [person_document(split.world, p) for p in split.injected]
    pairs = [(q, a) for q, a, _ in held_out]
    return {
        "unchanged_closed_book": score(model, tokenizer, unchanged_questions(split)),
        "held_out_open_book": score(
            model, tokenizer, pairs, documents=[documents[i] for _, _, i in held_out]
        ),
        "held_out_closed_book": score(model, tokenizer, pairs),
    }
