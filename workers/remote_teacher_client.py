"""The worker's HTTP client for a remote teacher (the spec's ``teacher.remote``): one request per
micro-batch, turned into :class:`ml.distillation.remote_teacher.RemoteScores`.

Two protocols. ``distill`` is ``workers/teacher_server.py``'s ``POST /v1/score`` (token ids in,
top-k ids and log-probabilities out), checked once against the student's vocabulary through
``GET /v1/info``. ``openai`` is ``POST /v1/completions`` with ``echo: true, max_tokens: 0,
logprobs: K`` and the prompts sent as token-id lists (vLLM and others serve it): the returned
token strings are mapped back to ids with the student's tokenizer -- which assumes the remote
model reads with that tokenizer and returns its pieces (or vLLM's ``token_id:N`` form); a
string the vocabulary lacks fails the job, naming it.

Failures: connection errors, timeouts and 5xx are retried with exponential backoff
(``RETRIES`` times, from ``BACKOFF_SECONDS``), then the job fails naming the URL; a 4xx fails
at once (a retry would be refused the same way).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from api.config import Settings
from api.jobs.remote_teacher_rules import host_allowed
from ml.distillation.remote_teacher import RemoteScores, check_vocabulary
from ml.loading import load_tokenizer

RETRIES = 4
BACKOFF_SECONDS = 0.5
EventSink = Callable[[str, str, dict[str, Any]], None]


class RemoteTeacherError(RuntimeError):
    """The remote teacher could not score a batch; the message names the URL and why."""


def _root(url: str) -> str:
    # "http://h:8000" and "http://h:8000/v1" (the usual OpenAI base URL) name the same server.
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class RemoteTeacherClient:
    """Scores right-padded batches on a remote teacher; ``score`` is the recipe's ScoreFn."""

    def __init__(
        self,
        remote: dict[str, Any],
        *,
        tokenizer: PreTrainedTokenizerBase,
        api_key: str | None = None,
        event: EventSink | None = None,
        retries: int = RETRIES,
        backoff_seconds: float = BACKOFF_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = remote["url"]
        self.protocol = remote.get("protocol", "distill")
        self.top_k = int(remote.get("top_k", 20))
        self.model = remote.get("model")
        self.tokenizer = tokenizer
        self._vocab: dict[str, int] = tokenizer.get_vocab()
        self._event = event or (lambda level, message, data: None)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=_root(self.url), headers=headers, timeout=float(remote.get("timeout_s", 60)),
            transport=transport,
        )  # fmt: skip
        self.requests = 0
        self.bytes_received = 0

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------------------- http
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        where = f"{_root(self.url)}{path}"
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    self.requests += 1
                    self.bytes_received += len(response.content)
                    return response.json()
                failure = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500:
                    raise RemoteTeacherError(
                        f"remote teacher {where} refused the request ({failure})"
                    )
            if attempt == self.retries:
                break
            wait = self.backoff_seconds * 2**attempt
            self._event("warn", f"remote teacher {where} failed ({failure}); retrying in "
                        f"{wait:.1f}s", {"attempt": attempt + 1, "url": where})  # fmt: skip
            time.sleep(wait)
        raise RemoteTeacherError(
            f"remote teacher {where} failed after {self.retries + 1} attempts ({failure})"
        )

    def info(self) -> dict[str, Any]:
        """The distill server's ``/v1/info``; for ``openai`` what the URL and model name say."""
        if self.protocol == "distill":
            return dict(self._request("GET", "/v1/info"))
        return {"model": self.model, "vocab_size": None, "tokenizer_sha256": None}

    def identity(self, info: dict[str, Any]) -> str:
        """What names this teacher in a teacher-logit cache's fingerprint: the served weights'
        sha256 (the same as a local copy of that model, so caches are shared), or for an OpenAI
        server, a hash of its URL and model name (trusted not to change under that name)."""
        if info.get("weights_sha256"):
            return str(info["weights_sha256"])
        key = f"openai:{_root(self.url)}:{self.model}"
        return "remote-" + hashlib.sha256(key.encode()).hexdigest()

    # --------------------------------------------------------------------------- score
    def score(self, input_ids: Tensor, attention_mask: Tensor) -> RemoteScores:
        """One request for the batch; rows are cut to their ``attention_mask`` (right padding)
        and the answer padded back to ``(B, T, top_k)``."""
        lengths = attention_mask.sum(dim=1).tolist()
        rows = [input_ids[i, :n].tolist() for i, n in enumerate(lengths)]
        if self.protocol == "distill":
            answer = self._request("POST", "/v1/score", {"input_ids": rows, "top_k": self.top_k})
            per_row = [
                (r["top_ids"], r["top_logprobs"], r["token_logprobs"]) for r in answer["rows"]
            ]
        else:
            per_row = self._openai_rows(rows)
        if len(per_row) != len(rows):
            raise RemoteTeacherError(f"remote teacher {self.url} answered {len(per_row)} rows "
                                     f"for {len(rows)}")  # fmt: skip
        batch, width = input_ids.shape
        top_ids = torch.zeros((batch, width, self.top_k), dtype=torch.long)
        top_lp = torch.full((batch, width, self.top_k), float("-inf"))
        token_lp = torch.full((batch, width), float("-inf"))
        for i, (ids, values, own) in enumerate(per_row):
            n = lengths[i]
            if len(ids) != n or len(values) != n or len(own) != n - 1:
                raise RemoteTeacherError(
                    f"remote teacher {self.url} scored {len(ids)} positions of a {n}-token row"
                )
            k = min(self.top_k, *(len(v) for v in ids)) if n else 0
            if n:
                top_ids[i, :n, :k] = torch.tensor([v[:k] for v in ids], dtype=torch.long)
                top_lp[i, :n, :k] = torch.tensor([v[:k] for v in values], dtype=torch.float32)
            if n > 1:
                token_lp[i, : n - 1] = torch.tensor(own, dtype=torch.float32)
        return RemoteScores(top_ids, top_lp, token_lp)

    def _openai_rows(
        self, rows: list[list[int]]
    ) -> list[tuple[list[list[int]], list[list[float]], list[float]]]:
        body = {"prompt": rows, "echo": True, "max_tokens": 0, "logprobs": self.top_k,
                "temperature": 0}  # fmt: skip
        if self.model:
            body["model"] = self.model
        answer = self._request("POST", "/v1/completions", body)
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        out = []
        for row, choice in zip(rows, choices, strict=False):
            logprobs = choice["logprobs"]
            tokens = [self._token_id(t) for t in logprobs["tokens"]]
            if tokens != row:
                raise RemoteTeacherError(
                    f"remote teacher {self.url} echoed other tokens than it was sent: it does "
                    "not read with the student's tokenizer"
                )
            ids, values = [], []
            # OpenAI index i is token i scored after tokens < i: our position i - 1.
            for entry in logprobs["top_logprobs"][1:]:
                ranked = sorted(
                    ((self._token_id(tok), float(lp)) for tok, lp in (entry or {}).items()),
                    key=lambda pair: -pair[1],
                )[: self.top_k]  # a server may add the actual token to its top-k
                ids.append([token for token, _ in ranked])
                values.append([lp for _, lp in ranked])
            ids.append([0] * self.top_k)  # the last position predicts past the prompt
            values.append([float("-inf")] * self.top_k)
            own = [float(v) for v in logprobs["token_logprobs"][1:]]
            out.append((ids, values, own))
        return out

    def _token_id(self, token: str) -> int:
        if token.startswith("token_id:") and token[len("token_id:") :].isdigit():
            return int(token[len("token_id:") :])  # vLLM's return_tokens_as_token_ids
        found = self._vocab.get(token)
        if found is None:
            raise RemoteTeacherError(
                f"remote teacher {self.url} returned the token {token!r}, which the student's "
                "vocabulary lacks: the remote model must share the student's tokenizer"
            )
        return found


@dataclass
class RemoteTeacherHandle:
    """An open client and what a teacher-logit cache needs to name and build its targets."""

    client: RemoteTeacherClient
    identity: str  # stands for the teacher's weights hash in cache fingerprints
    student_dir: Path  # the tokenizer the examples are encoded with
    tokenizer_sha256: str


def open_remote_for_job(
    settings: Settings, resolved: dict[str, Any], event: EventSink
) -> RemoteTeacherHandle | None:
    """The remote teacher of a resolved distill job, checked and ready; None for a local one."""
    teacher, student = resolved["teacher"], resolved["student"]
    if "remote" not in teacher:
        return None
    return open_remote_teacher(
        settings, teacher["remote"], student_dir=Path(student["path"]),
        vocab_size=int(student["vocab_size"]), tokenizer_sha256=student.get("tokenizer_sha256"),
        event=event,
    )  # fmt: skip


def open_remote_teacher(
    settings: Settings,
    remote: dict[str, Any],
    *,
    student_dir: Path,
    vocab_size: int,
    tokenizer_sha256: str | None,
    event: EventSink,
) -> RemoteTeacherHandle:
    """A client for ``remote`` after the checks a worker repeats (allow-list, API key present,
    same vocabulary as the student)."""
    if not host_allowed(remote["url"], settings):
        raise RemoteTeacherError(
            f"remote teacher {remote['url']}: host not in DISTILL_REMOTE_TEACHER_ALLOWED_HOSTS"
        )
    api_key = None
    if remote.get("api_key_env"):
        api_key = os.environ.get(remote["api_key_env"])
        if not api_key:
            raise RemoteTeacherError(
                f"remote teacher {remote['url']}: the worker has no {remote['api_key_env']} set"
            )
    client = RemoteTeacherClient(
        remote, tokenizer=load_tokenizer(student_dir), api_key=api_key, event=event
    )
    try:
        info = client.info()
        if remote.get("protocol", "distill") == "distill":
            check_vocabulary(info, vocab_size=vocab_size, tokenizer_sha256=tokenizer_sha256,
                             url=remote["url"])  # fmt: skip
            if int(info.get("max_top_k", remote["top_k"])) < int(remote["top_k"]):
                raise RemoteTeacherError(
                    f"remote teacher {remote['url']} serves top_k up to {info['max_top_k']}, "
                    f"the spec asks for {remote['top_k']}"
                )
    except BaseException:
        client.close()
        raise
    event("info", "remote teacher ready",
          {"url": remote["url"], "protocol": client.protocol, "top_k": client.top_k,
           "model": info.get("model")})  # fmt: skip
    return RemoteTeacherHandle(client, client.identity(info), student_dir, tokenizer_sha256 or "")
