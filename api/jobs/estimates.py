"""What a dry run predicts: model sizes from configs on the meta device (no weights read),
tokens from the job's own tokenizer, steps as the recipe counts them, peak memory and time.

Memory (bytes), for the recipe's float32 master weights:

* student weights ``4 P``; gradients ``4 T`` and AdamW's two moments ``8 T`` for the ``T``
  trainable parameters (``T = P`` without LoRA; with LoRA ``r (d_in + d_out)`` per adapted
  linear layer);
* each live teacher's weights at their stored dtype (none when a teacher cache replaces it);
* activations of one micro-batch, after Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models" (arXiv:2205.05198), Sec. 4.1: ``s b h (34 + 5 a
  s / h)`` bytes per layer in 16-bit, doubled for float32 on the CPU;
* logits: ``b s V`` float32 values held ``LOGIT_COPIES`` times (student logits and their
  gradient, teacher logits, two log-softmax results); with ``kd_chunk_tokens`` the KD part holds
  ``chunk x V`` at a time instead of ``b s V``.

Time: training FLOPs ``6 P`` per token for the student (forward + backward) and ``2 P_t`` per
token per live teacher (forward), after Kaplan et al. 2020 (arXiv:2001.08361) Sec. 2.1,
divided by an assumed sustained throughput per queue (``ASSUMED_FLOPS``). Generation (seqkd,
onpolicy, opd, skd) and evaluation are not included; the report says so.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

LOGIT_COPIES_KD = 5
LOGIT_COPIES_CE = 3
# Sustained training throughput assumed per queue (FLOP/s): a shared CPU core set running
# float32, and a datacenter GPU under bf16 autocast at ~30% of a 200 TFLOP/s peak.
# gpu-multi: one process runs the job today (multi-process launching is not built yet).
ASSUMED_FLOPS = {"cpu": 2.0e10, "gpu": 6.0e13, "gpu-multi": 6.0e13}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def config_of(path: str) -> PretrainedConfig:
    return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)


def describe_config(config: PretrainedConfig, lora: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameter count and shape of a model built from ``config`` on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    params = int(sum(p.numel() for p in model.parameters()))
    trainable = params
    if lora is not None:
        targets = tuple(lora.get("target_modules") or ("q_proj", "k_proj", "v_proj", "o_proj"))
        rank = int(lora.get("r", 16))
        trainable = sum(
            rank * (module.in_features + module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in targets
        )
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "")
    return {
        "arch": (getattr(config, "architectures", None) or [type(model).__name__])[0],
        "model_type": config.model_type,
        "params": params,
        "trainable_params": trainable,
        "vocab_size": int(config.vocab_size),
        "num_layers": int(getattr(config, "num_hidden_layers", 0) or 0),
        "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
        "num_attention_heads": int(getattr(config, "num_attention_heads", 0) or 0),
        "dtype": dtype.removeprefix("torch.") or "float32",
    }


def plan_steps(
    *, train_rows: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int | None
) -> dict[str, Any]:
    """Steps as ``DistillRecipe.setup`` counts them (a step never spans two epochs)."""
    micro_per_epoch = -(-train_rows // batch_size)
    steps_per_epoch = -(-micro_per_epoch // grad_accum)
    total = max_steps or steps_per_epoch * epochs
    return {
        "train_rows": train_rows,
        "micro_batches_per_epoch": micro_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "epochs_covered": round(total / steps_per_epoch, 3) if steps_per_epoch else 0,
    }


def estimate_memory(
    *,
    student: dict[str, Any],
    teachers: list[dict[str, Any]],
    micro_batch: int,
    seq_len: int,
    kd: bool,
    kd_chunk_tokens: int,
    float32_activations: bool,
    processes: int = 1,
    sharded: bool = False,
) -> dict[str, Any]:
    """Peak bytes of one training process. With ``processes`` > 1 each takes its share of the
    micro-batch; ``sharded`` (FSDP) divides the student's weights, gradients and AdamW states
    by ``processes`` and adds one decoder layer's gathered weights."""
    params, trainable = student["params"], student["trainable_params"]
    layers, hidden = student["num_layers"], student["hidden_size"]
    micro_batch = -(-micro_batch // max(processes, 1))
    heads = max(student["num_attention_heads"], 1)
    vocab = student["vocab_size"]
    per_layer = seq_len * micro_batch * hidden * (34 + 5 * heads * seq_len / max(hidden, 1))
    activations = int(layers * per_layer * (2 if float32_activations else 1))
    full = micro_batch * seq_len * vocab * 4
    if not kd:
        logits = LOGIT_COPIES_CE * full
    elif kd_chunk_tokens:
        logits = LOGIT_COPIES_CE * full // 3 + LOGIT_COPIES_KD * kd_chunk_tokens * vocab * 4
    else:
        logits = LOGIT_COPIES_KD * full
    shards = max(processes, 1) if sharded else 1
    gathered_layer = 4 * params // max(layers, 1) if sharded else 0
    parts = {
        "student_weights": 4 * params // shards + gathered_layer,
        "gradients": 4 * trainable // shards,
        "adamw_states": 8 * trainable // shards,
        "teacher_weights": sum(t["params"] * DTYPE_BYTES.get(t["dtype"], 4) for t in teachers),
        "activations": activations,
        "logits": logits,
    }
    return {
        "peak_bytes": sum(parts.values()),
        "parts_bytes": parts,
        "micro_batch": micro_batch,
        "sequence_length": seq_len,
        "processes": processes,
        "sharded": sharded,
        "method": "per process: float32 master weights + gradients + AdamW (8 B per trainable "
        "parameter), divided over the processes when sharded (plus one gathered layer) + "
        "teacher weights at their dtype + activations (Korthikanti et al. 2022, "
        "34 + 5as/h bytes per token per hidden unit per layer, x2 for float32) + logits "
        f"({LOGIT_COPIES_KD if kd else LOGIT_COPIES_CE} float32 copies of batch x seq x vocab)",
    }


def estimate_time(
    *, student_params: int, teacher_params: int, tokens: int, queue: str
) -> dict[str, Any]:
    flops = 6 * student_params * tokens + 2 * teacher_params * tokens
    rate = ASSUMED_FLOPS[queue]
    return {
        "seconds": round(flops / rate, 1),
        "training_flops": flops,
        "assumed_flops_per_s": rate,
        "method": "6 x student params + 2 x live teacher params FLOPs per token (Kaplan et al. "
        f"2020) at an assumed {rate:.0e} FLOP/s on the '{queue}' queue; generation and "
        "evaluation not included",
    }
