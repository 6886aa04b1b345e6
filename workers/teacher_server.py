"""A teacher inference server: one local safetensors model, scored over HTTP for remote-teacher
distillation (docs/OPERATIONS.md "Remote teachers").

    python -m workers.teacher_server --model DIR --host 127.0.0.1 --port 8100 [--top-k 64]
        [--api-key KEY | env DISTILL_TEACHER_SERVER_API_KEY] [--served-model-name NAME]

Endpoints:

* ``GET /v1/info``: ``{model, vocab_size, tokenizer_sha256, weights_sha256, max_top_k}`` -- what
  a worker checks against its student before asking for scores (same vocabulary), and what
  names the teacher in a teacher-logit cache's fingerprint.
* ``POST /v1/score`` (our protocol, token ids): ``{input_ids: [[...]], top_k}`` ->
  ``{rows: [{top_ids, top_logprobs, token_logprobs}]}``; for a row of ``L`` tokens,
  ``top_ids``/``top_logprobs`` are ``L x K`` (position ``t``: the distribution after tokens
  ``0..t``) and ``token_logprobs`` has ``L - 1`` values, ``log p(ids[t + 1])``.
* ``POST /v1/completions`` (OpenAI-compatible, what vLLM and others serve) with
  ``echo: true, max_tokens: 0, logprobs: K``: each prompt's
  ``choices[i].logprobs.{tokens, token_logprobs, top_logprobs, text_offset}``; tokens are the
  tokenizer's pieces, ``top_logprobs[0]`` and ``token_logprobs[0]`` are null (nothing
  predicts the first token). Prompts are token-id lists (what the worker sends) or strings.
* ``GET /v1/models``, ``GET /health``.

Log-probabilities are float32 ``log_softmax`` of one forward pass
(:func:`ml.distillation.remote_teacher.score_with_model`); requests are served one at a time.
The model is loaded with :mod:`ml.loading` (safetensors only, no remote code).
"""

from __future__ import annotations

import argparse
import hmac
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ml.distillation.remote_teacher import RemoteScores, score_with_model
from ml.loading import inspect_model_dir, load_causal_lm, load_tokenizer

API_KEY_ENV = "DISTILL_TEACHER_SERVER_API_KEY"
MAX_TOKENS_PER_REQUEST = 262_144  # bounds one forward pass's (tokens, vocab) log-softmax


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_ids: list[list[int]] = Field(min_length=1)
    top_k: int = Field(default=20, ge=1)


class CompletionRequest(BaseModel):
    """The OpenAI completions body; fields a scorer has no use for are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16
    echo: bool = False
    logprobs: int | None = None


class TeacherServer:
    """The loaded model and how it answers; the FastAPI app only routes to it."""

    def __init__(self, model_dir: Path, *, max_top_k: int, name: str, device: str) -> None:
        self.info = inspect_model_dir(model_dir)
        self.model = load_causal_lm(model_dir, device=device)
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(model_dir)
        self.name = name
        self.max_top_k = max_top_k
        self.device = device
        self._lock = threading.Lock()  # one forward at a time: CPU threads or one GPU

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "vocab_size": self.info.vocab_size,
            "tokenizer_sha256": self.info.tokenizer_sha256,
            "weights_sha256": self.info.weights_sha256,
            "max_top_k": self.max_top_k,
        }

    def check(self, rows: list[list[int]], top_k: int, param: str) -> None:
        if top_k > self.max_top_k:
            raise _problem(422, f"{param} {top_k} is above this server's --top-k {self.max_top_k}")
        vocab = self.info.vocab_size
        if any(not row for row in rows):
            raise _problem(422, "every prompt needs at least one token")
        if sum(len(row) for row in rows) > MAX_TOKENS_PER_REQUEST:
            raise _problem(422, f"more than {MAX_TOKENS_PER_REQUEST} tokens in one request")
        if any(not 0 <= token < vocab for row in rows for token in row):
            raise _problem(422, f"a token id lies outside the vocabulary (0..{vocab - 1})")

    def score(self, rows: list[list[int]], top_k: int) -> RemoteScores:
        width = max(len(row) for row in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with self._lock:
            scores = score_with_model(
                self.model, input_ids.to(self.device), mask.to(self.device), top_k
            )
        return RemoteScores(*(t.cpu() for t in (scores.top_ids, scores.top_logprobs,
                                                 scores.token_logprobs)))  # fmt: skip

    def score_rows(self, rows: list[list[int]], top_k: int) -> list[dict[str, Any]]:
        scores = self.score(rows, top_k)
        return [
            {
                "top_ids": scores.top_ids[i, : len(row)].tolist(),
                "top_logprobs": scores.top_logprobs[i, : len(row)].tolist(),
                "token_logprobs": scores.token_logprobs[i, : len(row) - 1].tolist(),
            }
            for i, row in enumerate(rows)
        ]

    def completion_logprobs(self, rows: list[list[int]], top_k: int) -> list[dict[str, Any]]:
        """OpenAI ``logprobs`` objects for echoed prompts: index ``i`` is token ``i``, scored by
        the distribution after tokens ``0..i-1`` (our position ``i - 1``)."""
        scores = self.score(rows, top_k)
        out = []
        for i, row in enumerate(rows):
            pieces = self.tokenizer.convert_ids_to_tokens(row)
            top: list[dict[str, float] | None] = [None]
            for t in range(len(row) - 1):
                ids = scores.top_ids[i, t].tolist()
                values = scores.top_logprobs[i, t].tolist()
                top.append(dict(zip(self.tokenizer.convert_ids_to_tokens(ids), values,
                                    strict=True)))  # fmt: skip
            out.append(
                {
                    "tokens": pieces,
                    "token_logprobs": [None, *scores.token_logprobs[i, : len(row) - 1].tolist()],
                    "top_logprobs": top,
                    "text_offset": [len(self.tokenizer.decode(row[:j])) for j in range(len(row))],
                }
            )
        return out

    def encode_prompt(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            return [list(self.tokenizer.encode(prompt))]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return [list(self.tokenizer.encode(p)) if isinstance(p, str) else list(p) for p in prompt]


def _problem(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _openai_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    return JSONResponse(status_code=status, content=body)


def create_app(server: TeacherServer, api_key: str | None = None) -> FastAPI:
    """The HTTP surface; with ``api_key`` every route but ``/health`` needs
    ``Authorization: Bearer <api_key>``."""

    def authorised(request: Request) -> None:
        if not api_key:
            return
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
            raise _problem(401, "missing or wrong bearer token")

    app = FastAPI(title="distill teacher server", docs_url=None, redoc_url=None)
    guarded = [Depends(authorised)]

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/info", dependencies=guarded)
    def info() -> dict[str, Any]:
        return server.describe()

    @app.get("/v1/models", dependencies=guarded)
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": server.name, "object": "model"}]}

    @app.post("/v1/score", dependencies=guarded)
    def score(body: ScoreRequest) -> dict[str, Any]:
        server.check(body.input_ids, body.top_k, "top_k")
        return {"model": server.name, "top_k": body.top_k,
                "rows": server.score_rows(body.input_ids, body.top_k)}  # fmt: skip

    @app.post("/v1/completions", dependencies=guarded, response_model=None)
    def completions(body: CompletionRequest) -> dict[str, Any] | JSONResponse:
        if body.model is not None and body.model != server.name:
            return _openai_error(404, f"model {body.model!r} is not served here", "model")
        if body.max_tokens != 0 or not body.echo or body.logprobs is None:
            return _openai_error(
                400, "this server only scores prompts: send echo true, max_tokens 0 and logprobs"
            )
        rows = server.encode_prompt(body.prompt)
        try:
            server.check(rows, body.logprobs, "logprobs")
        except HTTPException as exc:
            return _openai_error(exc.status_code, str(exc.detail), "logprobs")
        logprobs = server.completion_logprobs(rows, body.logprobs)
        choices = [
            {"index": i, "text": server.tokenizer.decode(row), "logprobs": lp,
             "finish_reason": "length"}
            for i, (row, lp) in enumerate(zip(rows, logprobs, strict=True))
        ]  # fmt: skip
        n_tokens = sum(len(row) for row in rows)
        return {
            "id": f"cmpl-{time.time_ns():x}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": server.name,
            "choices": choices,
            "usage": {"prompt_tokens": n_tokens, "completion_tokens": 0,
                      "total_tokens": n_tokens},
        }  # fmt: skip

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a safetensors model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--top-k", type=int, default=64, help="the largest top_k served")
    parser.add_argument("--api-key", default=None, help=f"or the env var {API_KEY_ENV}")
    parser.add_argument("--served-model-name", default=None, help="default: the directory name")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    import uvicorn

    server = TeacherServer(
        args.model,
        max_top_k=args.top_k,
        name=args.served_model_name or args.model.resolve().name,
        device=args.device,
    )
    app = create_app(server, api_key=args.api_key or os.environ.get(API_KEY_ENV))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
