"""Train the small base model that knowledge edits change: a causal LM that learnt the known
part of :mod:`ml.data.facts_world` on the CPU.

``python -m ml.data.facts_model OUT_DIR`` builds a LLaMA-style model (``--arch gpt2`` for the
GPT-2-style variant) and prints its accuracy on its training facts. :func:`build_facts_model`
reuses a directory that already holds a model built with the same settings.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from ml.data.examples import IGNORE_INDEX
from ml.data.facts_world import build_world, entity_documents, known_fact_pairs, training_sentences
from ml.data.tokenizer import train_bpe_tokenizer
from ml.distillation.losses import ce_loss
from ml.distillation.schedule import build_scheduler
from ml.loading import load_causal_lm, load_tokenizer, save_model

MANIFEST = "facts_model.json"
BATCH_SIZE = 64


def _make_model(arch: str, vocab: int, hidden: int, layers: int, special: dict[str, int]) -> Any:
    if arch == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=hidden,
                intermediate_size=4 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=64,
                tie_word_embeddings=False,
                pad_token_id=special["pad_token_id"],
                bos_token_id=special["bos_token_id"],
                eos_token_id=special["eos_token_id"],
            )
        )
    if arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_embd=hidden,
                n_layer=layers,
                n_head=4,
                n_positions=64,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=special["bos_token_id"],
                eos_token_id=special["eos_token_id"],
                pad_token_id=special["pad_token_id"],
            )
        )
    raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")


def build_facts_model(
    out_dir: Path,
    *,
    seed: int = 0,
    arch: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    steps: int = 800,
    lr: float = 3e-3,
    vocab_size: int = 1024,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse) the facts model in ``out_dir`` and return its manifest.

    The model learns every sentence of :func:`training_sentences` for the world of ``seed``
    (the known people only) with plain next-token CE on all tokens after ``<bos>``. The manifest
    (``facts_model.json``) records the settings, the final loss and the seconds taken; a directory
    whose manifest has the same settings is reused as is.
    """
    out_dir = Path(out_dir)
    settings = {
        "seed": seed,
        "arch": arch,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "steps": steps,
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
    world = build_world(seed)
    sentences = training_sentences(world)
    documents = [d["text"] for d in entity_documents(world, world.people)]
    tokenizer = train_bpe_tokenizer(sentences + documents, vocab_size=vocab_size)
    special = {
        "pad_token_id": int(tokenizer.pad_token_id),  # type: ignore[arg-type]
        "bos_token_id": int(tokenizer.bos_token_id),  # type: ignore[arg-type]
        "eos_token_id": int(tokenizer.eos_token_id),  # type: ignore[arg-type]
    }
    model = _make_model(arch, len(tokenizer), hidden_size, num_layers, special)
    model.train()
    encoded = [
        [special["bos_token_id"]]
        + tokenizer.encode(text, add_special_tokens=False)
        + [special["eos_token_id"]]
        for text in sentences
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = build_scheduler(
        optimizer, warmup_steps=max(1, steps // 20), total_steps=steps, schedule="cosine"
    )
    rng = random.Random(seed)
    order: list[int] = []
    recent: list[float] = []
    for step in range(1, steps + 1):
        if len(order) < BATCH_SIZE:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order.extend(fresh)
        rows = [encoded[i] for i in order[:BATCH_SIZE]]
        del order[:BATCH_SIZE]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), special["pad_token_id"], dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            labels[i, 1 : len(row)] = torch.tensor(row[1:])
            mask[i, : len(row)] = 1
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss = ce_loss(logits[:, :-1], labels[:, 1:])
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
        "sentences": len(sentences),
    }
    manifest["known_fact_accuracy"] = known_fact_accuracy(model, tokenizer, seed)
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


@torch.no_grad()
def known_fact_accuracy(model: PreTrainedModel, tokenizer: Any, seed: int) -> dict[str, float]:
    """Teacher-forced token accuracy and greedy exact match on the first-template prompt of
    every trained fact of the world of ``seed``."""
    from ml.editing.metrics import greedy_exact_match, teacher_forced_accuracy

    pairs = known_fact_pairs(build_world(seed))
    prompts, targets = [p for p, _ in pairs], [t for _, t in pairs]
    tf = teacher_forced_accuracy(model, tokenizer, prompts, targets)
    em = greedy_exact_match(model, tokenizer, prompts, targets)
    return {
        "facts": float(len(pairs)),
        "teacher_forced": sum(tf) / len(tf),
        "generation": sum(em) / len(em),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", default="llama", choices=("llama", "gpt2"))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = build_facts_model(
        args.out_dir,
        seed=args.seed,
        arch=args.arch,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        steps=args.steps,
    )
    model, tokenizer = load_causal_lm(args.out_dir), load_tokenizer(args.out_dir)
    manifest["reloaded_accuracy"] = known_fact_accuracy(model, tokenizer, args.seed)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
