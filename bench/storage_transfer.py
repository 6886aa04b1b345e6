"""Shared storage transfers (api/storage.py) against moto's S3 server on loopback.

    .venv/bin/python -m bench.storage_transfer --mib 128 --repeats 3

One file of ``--mib`` MiB is uploaded (``upload_file``: multipart, one part per chunk) and
fetched by a second "host" (``ensure_file`` with its sha256), and a checkpoint-shaped directory
(a 24 MiB weights file, a 48 MiB optimizer file, small JSON files) is uploaded and fetched
(``upload_dir``/``ensure_dir`` with its directory sha256). Each reports MiB/s (median over
repeats) and the tracemalloc peak of the client: memory per transfer stays a few chunks whatever
the size. moto keeps objects in its own process's memory and is single-threaded Python, so these
are the client's costs over a slow server, not what S3 or MinIO would give.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from api.config import Settings
from api.storage import ArtifactStore, open_store
from ml.distillation.checkpointing import directory_sha256

ACCESS, SECRET, REGION = "bench", "bench-secret", "us-east-1"


def _write(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))


def _store(home: Path, endpoint: str, bucket: str, chunk: int) -> ArtifactStore:
    return open_store(Settings(home=home, storage_url=f"s3://{bucket}/bench",
                               s3_endpoint_url=endpoint, s3_access_key_id=ACCESS,
                               s3_secret_access_key=SECRET, s3_region=REGION,
                               storage_chunk_bytes=chunk))  # fmt: skip


def _timed(work: Any) -> tuple[float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        work()
        return time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-mib", type=int, default=8)
    args = parser.parse_args()
    chunk = args.chunk_mib << 20
    from tests.support.stack import free_port, wait_until

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        def up() -> bool:
            try:
                client = boto3.client(
                    "s3", endpoint_url=endpoint, region_name=REGION,
                    aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                )  # fmt: skip
                client.create_bucket(Bucket="bench")
                return True
            except Exception:
                return False

        wait_until(up, timeout=60, what="moto.server")
        rows: dict[str, list[tuple[float, int]]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            writer = _store(base / "a", endpoint, "bench", chunk)
            drafted = writer.roots["data"] / "draft.jsonl"
            _write(drafted, args.mib)
            sha = hashlib.sha256(drafted.read_bytes()).hexdigest()
            big = writer.roots["data"] / sha[:2] / f"{sha}.jsonl"  # the content-addressed name
            big.parent.mkdir(parents=True)
            drafted.rename(big)
            ckpt = writer.roots["artifacts"] / "jobs" / "job_0bench" / "checkpoints" / "step_1"
            _write(ckpt / "model.safetensors", 24)
            _write(ckpt / "optimizer.safetensors", 48)
            (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1}))
            ckpt_sha = directory_sha256(ckpt)[0]
            writer.upload_file(big)  # warms the client (its one-off setup is not measured)
            for repeat in range(args.repeats):
                reader = _store(base / f"b{repeat}", endpoint, "bench", chunk)  # an empty cache
                file_local, dir_local = reader.localize(str(big)), reader.localize(str(ckpt))
                assert file_local != big and dir_local != ckpt
                for name, work in (
                    ("file upload", lambda: writer.upload_file(big)),
                    ("file download", lambda r=reader, f=file_local: r.ensure_file(f, sha)),
                    ("checkpoint upload", lambda: writer.upload_dir(ckpt)),
                    (
                        "checkpoint download",
                        lambda r=reader, d=dir_local: r.ensure_dir(d, ckpt_sha),
                    ),  # fmt: skip
                ):
                    rows.setdefault(name, []).append(_timed(work))
        sizes = {"file": args.mib, "checkpoint": 72}
        result = {}
        for name, runs in rows.items():
            mib = sizes[name.split()[0]]
            speeds = [mib / seconds for seconds, _ in runs]
            result[name] = {
                "mib": mib,
                "mib_per_s_median": round(statistics.median(speeds), 1),
                "mib_per_s_range": [round(min(speeds), 1), round(max(speeds), 1)],
                "peak_mib": round(max(peak for _, peak in runs) / 2**20, 1),
            }
        print(json.dumps({"chunk_mib": args.chunk_mib, "repeats": args.repeats,
                          "results": result}, indent=2))  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
