"""Peak memory of one forward + backward of the KD loss: plain logits vs chunked hidden states.

    .venv/bin/python bench/kd_memory.py                   # CPU, vocab 32000 and 50257
    .venv/bin/python bench/kd_memory.py --device cuda     # torch.cuda.max_memory_allocated

Peak memory *and* time of the step; every configuration of a vocabulary runs ``--repeats``
times, interleaved (plain, chunked..., then reversed), and the medians are compared to the
plain path's (ratios printed; JSON in ``bench/results/kd_memory.json``).

Each configuration runs in a fresh subprocess. The inputs — student hidden states
``(batch, seq, hidden)`` and lm head ``(vocab, hidden)`` with gradients, the teacher's likewise
without — are built first; the figure is the peak *above* that point: on CPU the growth of
``getrusage(RUSAGE_SELF).ru_maxrss`` (glibc's mmap threshold pinned at 1 MiB so that freed
tensors leave the process), on CUDA ``max_memory_allocated`` minus the memory
allocated before the step. Every token is a response token, so both paths do the same work.
The plain path is ``kd_loss(h_s @ W_s.T, h_t @ W_t.T)``; the chunked one is
``chunked_kd_loss(h_s, W_s, h_t, W_t, chunk_tokens=c)`` (ml/distillation/chunked.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _measure(args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import torch

    from ml.distillation.chunked import chunked_kd_loss
    from ml.distillation.losses import kd_loss

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device)

    batch, seq, hidden, vocab = args.batch, args.seq, args.hidden, args.vocab
    student_hidden = randn(batch, seq, hidden, scale=1.0).requires_grad_(True)
    student_weight = randn(vocab, hidden, scale=hidden**-0.5).requires_grad_(True)
    teacher_hidden = randn(batch, seq, hidden, scale=1.0)
    teacher_weight = randn(vocab, hidden, scale=2 * hidden**-0.5)
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    params = {"t": 0.5} if args.method == "taid" else {}

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    started = time.perf_counter()
    if args.mode == "plain":
        student_logits = student_hidden @ student_weight.T
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.T
        loss = kd_loss(student_logits, teacher_logits, method=args.method, mask=mask, **params)
    else:
        loss = chunked_kd_loss(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            method=args.method,
            mask=mask,
            chunk_tokens=args.chunk_tokens,
            **params,
        )
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {
        "peak_bytes": float(peak),
        "seconds": time.perf_counter() - started,
        "loss": float(loss),
    }


def _run_one(args: argparse.Namespace, vocab: int, mode: str, chunk: int) -> dict[str, float] | str:
    """The worker's measurements, or the last line of its error (e.g. out of memory)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        f"--mode={mode}",
        f"--vocab={vocab}",
        f"--chunk-tokens={chunk}",
        f"--batch={args.batch}",
        f"--seq={args.seq}",
        f"--hidden={args.hidden}",
        f"--method={args.method}",
        f"--device={args.device}",
    ]
    # A fixed glibc mmap threshold: every large tensor is mmapped and returned to the OS when
    # freed, so ru_maxrss follows the live tensors instead of the allocator's dynamic threshold
    # (which otherwise keeps ~32 MiB chunks on the heap and inflates small-chunk figures).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        return "failed: " + ("out of memory" if "out of memory" in done.stderr else lines[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 50257])
    parser.add_argument("--chunk-tokens", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--method", default="fkl")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kd_memory.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("plain", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.vocab, args.chunk_tokens = args.vocab[0], args.chunk_tokens[0]
        print(json.dumps(_measure(args)))
        return

    print(
        f"KD loss ({args.method}) forward+backward, batch {args.batch}, seq {args.seq}, "
        f"hidden {args.hidden}, device {args.device}; peak memory above the inputs; "
        f"median of {args.repeats} interleaved repeats (seconds: min-max)"
    )
    print(
        f"{'vocab':>6} {'path':<14} {'peak MiB':>9} {'seconds':>8} {'(spread)':>13} "
        f"{'mem/plain':>9} {'time/plain':>10}"
    )
    table = []
    for vocab in args.vocab:
        configs = [("plain", 0)] + [("chunked", c) for c in args.chunk_tokens]
        runs: dict[tuple[str, int], list[dict[str, float] | str]] = {c: [] for c in configs}
        for repeat in range(args.repeats):  # interleaved, order reversed every other repeat
            for config in configs if repeat % 2 == 0 else configs[::-1]:
                runs[config].append(_run_one(args, vocab, *config))
        plain = _median(runs[("plain", 0)])
        for mode, chunk in configs:
            result = _median(runs[(mode, chunk)])
            if mode == "chunked" and isinstance(plain, dict) and isinstance(result, dict):
                if abs(result["loss"] - plain["loss"]) > 1e-4 * max(1.0, abs(plain["loss"])):
                    raise SystemExit(f"chunked loss {result['loss']} != plain {plain['loss']}")
            label = "plain" if mode == "plain" else f"chunked {chunk}"
            print(_row(vocab, label, result, None if mode == "plain" else plain))
            table.append({"vocab": vocab, "path": label, "result": result})
        # Written after every vocabulary, so a run cut short keeps what it measured.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "mode", "out")}
        args.out.write_text(json.dumps({"settings": settings, "table": table}, indent=2) + "\n")


def _median(results: list[dict[str, float] | str]) -> dict[str, float] | str:
    """Median peak and time over the repeats, with the time's spread; a failure wins."""
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        return failed[0]
    done = [r for r in results if isinstance(r, dict)]
    seconds = [r["seconds"] for r in done]
    return {
        "peak_bytes": statistics.median(r["peak_bytes"] for r in done),
        "seconds": statistics.median(seconds),
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "loss": done[0]["loss"],
    }


def _row(
    vocab: int, label: str, result: dict[str, float] | str, plain: dict[str, float] | str | None
) -> str:
    if isinstance(result, str):
        return f"{vocab:>6} {label:<14} {result}"
    spread = f"({result['seconds_min']:.2f}-{result['seconds_max']:.2f})"
    line = (
        f"{vocab:>6} {label:<14} {result['peak_bytes'] / 2**20:>9.0f} "
        f"{result['seconds']:>8.2f} {spread:>13}"
    )
    if isinstance(plain, dict):
        line += f" {result['peak_bytes'] / max(plain['peak_bytes'], 1.0):>9.3f}"
        line += f" {result['seconds'] / plain['seconds']:>10.2f}"
    elif plain is not None:
        line += f" {'(plain failed)':>20}"
    return line


if __name__ == "__main__":
    main()
