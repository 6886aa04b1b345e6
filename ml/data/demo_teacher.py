"""Train a small LLaMA-style teacher on the synthetic instruction set, on the CPU.

``python -m ml.data.demo_teacher OUT_DIR --steps 600`` builds one and prints its held-out
exact match; tests use :func:`build_tiny_teacher` (seconds, not minutes).
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
from transformers import LlamaConfig, LlamaForCausalLM

from ml.data.examples import collate, encode_example
from ml.data.formatting import to_prompt_response
from ml.data.instructions import generate_instruction_records, split_records
from ml.data.tokenizer import train_bpe_tokenizer
from ml.distillation.losses import ce_loss
from ml.distillation.schedule import build_scheduler
from ml.loading import save_model

BATCH_SIZE = 32
MAX_LENGTH = 64
LEARNING_RATE = 3e-3


def build_demo_teacher(
    out_dir: Path,
    *,
    train_records: list[dict[str, Any]],
    steps: int,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train tokenizer + model on ``train_records`` with plain CE and save to ``out_dir``.

    Records are any shape :func:`ml.data.formatting.to_prompt_response` accepts. Returns
    ``{"steps", "final_loss" (mean of the last 10 steps), "seconds"}``.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    pairs = [to_prompt_response(record) for record in train_records]
    if not pairs:
        raise ValueError("train_records is empty")
    tokenizer = train_bpe_tokenizer((p + r for p, r in pairs), vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.train()
    encoded = [encode_example(tokenizer, p, r, MAX_LENGTH) for p, r in pairs]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    scheduler = build_scheduler(
        optimizer, warmup_steps=max(1, steps // 20), total_steps=steps, schedule="cosine"
    )
    order_rng = random.Random(seed)
    order: list[int] = []
    recent: list[float] = []
    pad_id = int(tokenizer.pad_token_id)
    for step in range(1, steps + 1):
        if len(order) < BATCH_SIZE:
            fresh = list(range(len(encoded)))
            order_rng.shuffle(fresh)
            order.extend(fresh)
        batch = collate([encoded[i] for i in order[:BATCH_SIZE]], pad_id)
        del order[:BATCH_SIZE]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = ce_loss(logits[:, :-1], batch["labels"][:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [float(loss.detach())])[-10:]
        if step % 50 == 0 or step == steps:
            log(f"step {step}/{steps} loss {sum(recent) / len(recent):.4f}")
    model.eval()
    save_model(model, tokenizer, Path(out_dir))
    return {
        "steps": float(steps),
        "final_loss": sum(recent) / len(recent),
        "seconds": time.perf_counter() - started,
    }


def build_tiny_teacher(out_dir: Path, seed: int = 0) -> Path:
    """A seconds-fast teacher for tests: hidden 64, 2 layers, 60 steps on 512 records."""
    records, _ = split_records(generate_instruction_records(600, seed), 0.1, seed)
    build_demo_teacher(
        Path(out_dir),
        train_records=records,
        steps=60,
        seed=seed,
        hidden_size=64,
        num_layers=2,
        log=lambda _: None,
    )
    return Path(out_dir)


def main(argv: list[str] | None = None) -> None:
    """Train the demo teacher and print held-out metrics as JSON."""
    from ml.evaluation.generation import evaluate_model
    from ml.loading import load_causal_lm, load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--eval-examples", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, held_out = split_records(generate_instruction_records(args.records, args.seed), 0.1, 1)
    result: dict[str, Any] = dict(
        build_demo_teacher(
            args.out_dir,
            train_records=train,
            steps=args.steps,
            seed=args.seed,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
        )
    )
    model, tokenizer = load_causal_lm(args.out_dir), load_tokenizer(args.out_dir)
    pairs = [to_prompt_response(r) for r in held_out[: args.eval_examples]]
    result["held_out"] = evaluate_model(
        model, tokenizer, pairs, max_length=MAX_LENGTH, max_new_tokens=12, batch_size=64
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
