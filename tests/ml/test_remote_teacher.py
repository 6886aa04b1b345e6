"""A remote teacher served on loopback by a second process (``workers.teacher_server``): its
scores against an independent computation with the model loaded here, both protocols, and the
recipe with it against the local teacher on the same sparse path."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from ml.data.examples import encode_example
from ml.distillation.recipe import DistillRecipe, RecipeConfig
from ml.distillation.remote_teacher import check_vocabulary, score_with_model
from ml.distillation.teacher_cache import (
    CaptureSettings,
    cache_fingerprint,
    capture_teacher_targets,
    fingerprint_fields,
)
from ml.loading import load_causal_lm, load_tokenizer
from tests.ml.test_recipe import Recorder
from tests.support.remote_teacher import TeacherProcess, build_student, teacher_server
from workers.remote_teacher_client import RemoteTeacherClient, RemoteTeacherError

TOP_K = 16
ROWS = [[1, 5, 9, 13, 40, 41, 2], [1, 7, 7, 100], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68]]


@pytest.fixture(scope="module")
def server(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with teacher_server(tiny_teacher_dir, tmp_path_factory.mktemp("logs"), top_k=32) as proc:
        yield proc


@pytest.fixture(scope="module")
def student_dir(tiny_teacher_dir: Path, model_root: Path) -> Path:
    return build_student(tiny_teacher_dir, model_root / "tiny-remote-student")


def _reference(model: torch.nn.Module, row: list[int], k: int) -> tuple[Any, Any, Any]:
    """Independent: one unpadded row, float64 log-softmax, top-k, each next token's log p."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0].double()
    log_p = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    values, ids = log_p.topk(k, dim=-1)
    own = log_p[:-1].gather(-1, torch.tensor(row[1:]).unsqueeze(-1)).squeeze(-1)
    return ids, values, own


def _client(server: TeacherProcess, tokenizer_dir: Path, **remote: Any) -> RemoteTeacherClient:
    spec = {"url": server.url, "protocol": "distill", "top_k": TOP_K, **remote}
    return RemoteTeacherClient(spec, tokenizer=load_tokenizer(tokenizer_dir), backoff_seconds=0.05)


def test_score_endpoint_equals_the_local_top_k(server: TeacherProcess, tiny_teacher_dir: Path):
    answer = httpx.post(f"{server.url}/v1/score", json={"input_ids": ROWS, "top_k": TOP_K},
                        timeout=60).json()  # fmt: skip
    model = load_causal_lm(tiny_teacher_dir)
    for row, got in zip(ROWS, answer["rows"], strict=True):
        ids, values, own = _reference(model, row, TOP_K)
        assert got["top_ids"] == ids.tolist()
        assert torch.allclose(torch.tensor(got["top_logprobs"], dtype=torch.float64), values,
                              atol=1e-5, rtol=0)  # fmt: skip
        assert torch.allclose(torch.tensor(got["token_logprobs"], dtype=torch.float64), own,
                              atol=1e-5, rtol=0)  # fmt: skip
    info = httpx.get(f"{server.url}/v1/info", timeout=10).json()
    assert info["vocab_size"] == model.config.vocab_size and info["max_top_k"] == 32


def test_completions_endpoint_equals_the_local_top_k(
    server: TeacherProcess, tiny_teacher_dir: Path
) -> None:
    body = {"model": tiny_teacher_dir.name, "prompt": ROWS, "echo": True, "max_tokens": 0,
            "logprobs": 5}  # fmt: skip
    answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    model, tokenizer = load_causal_lm(tiny_teacher_dir), load_tokenizer(tiny_teacher_dir)
    for row, choice in zip(ROWS, answer["choices"], strict=True):
        logprobs = choice["logprobs"]
        ids, values, own = _reference(model, row, 5)
        assert logprobs["tokens"] == tokenizer.convert_ids_to_tokens(row)
        assert logprobs["top_logprobs"][0] is None and logprobs["token_logprobs"][0] is None
        for t in range(len(row) - 1):  # OpenAI index t + 1 is our position t
            expected = dict(zip(tokenizer.convert_ids_to_tokens(ids[t].tolist()),
                                values[t].tolist(), strict=True))  # fmt: skip
            got = logprobs["top_logprobs"][t + 1]
            assert got.keys() == expected.keys()
            assert all(abs(got[k] - expected[k]) < 1e-5 for k in expected)
            assert abs(logprobs["token_logprobs"][t + 1] - float(own[t])) < 1e-5
        assert logprobs["text_offset"][0] == 0
        assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    refused = httpx.post(f"{server.url}/v1/completions", json={**body, "max_tokens": 4})
    assert refused.status_code == 400 and "max_tokens 0" in refused.json()["error"]["message"]


def test_both_protocols_give_the_client_the_same_scores(
    server: TeacherProcess, tiny_teacher_dir: Path
) -> None:
    width = max(len(r) for r in ROWS)
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in ROWS])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ROWS])
    ours = _client(server, tiny_teacher_dir).score(input_ids, mask)
    openai = _client(server, tiny_teacher_dir, protocol="openai", model=tiny_teacher_dir.name,
                     url=server.url + "/v1").score(input_ids, mask)  # fmt: skip
    real = mask.bool()
    assert torch.equal(ours.top_ids[:, :-1][real[:, 1:]], openai.top_ids[:, :-1][real[:, 1:]])
    assert torch.allclose(ours.token_logprobs, openai.token_logprobs)  # -inf where no next
    assert torch.allclose(ours.top_logprobs[:, :-1][real[:, 1:]],
                          openai.top_logprobs[:, :-1][real[:, 1:]])  # fmt: skip


def _recipe_run(config: RecipeConfig, remote_score: Any = None) -> Recorder:
    recorder = Recorder()
    recipe = DistillRecipe(
        config, metrics_sink=recorder.batches.append,
        event_sink=lambda level, message, data: recorder.events.append((level, message, data)),
        should_stop=recorder.should_stop, on_checkpoint=lambda step, path: None,
        remote_score=remote_score,
    )  # fmt: skip
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return recorder


def _series(recorder: Recorder, key: str) -> torch.Tensor:
    values = recorder.series(key)
    return torch.tensor([values[s] for s in sorted(values)], dtype=torch.float64)


def test_recipe_with_the_remote_teacher_equals_a_local_top_k_cache(
    server: TeacherProcess,
    student_dir: Path,
    tiny_teacher_dir: Path,
    make_config: Callable[..., RecipeConfig],
    tmp_path: Path,
) -> None:
    common = {"student_path": student_dir, "student_init": None, "max_steps": 3,
              "temperature": 2.0, "alpha_ce": 0.2}  # fmt: skip
    remote = {"url": server.url, "protocol": "distill", "top_k": TOP_K}
    client = _client(server, student_dir)
    remote_run = _recipe_run(make_config(teacher_path=None, remote_teacher=remote, **common),
                             client.score)  # fmt: skip
    assert client.requests == 3  # one round trip per micro-batch (grad_accum 1)

    # The local teacher restricted to the same top-k: a cache captured from it, same loss path.
    config = make_config(**common)
    tokenizer = load_tokenizer(student_dir)
    examples = [encode_example(tokenizer, p, r, config.max_length) for p, r in config.train_records]
    settings = CaptureSettings(mode="topk", k=TOP_K)
    names = {"teacher_sha256": "t", "tokenizer_sha256": "k", "dataset_sha256": "d",
             "max_length": config.max_length, "settings": settings}  # fmt: skip
    fields, fingerprint = fingerprint_fields(**names), cache_fingerprint(**names)
    capture_teacher_targets(
        load_causal_lm(tiny_teacher_dir), examples, tmp_path / "cache", settings=settings,
        fingerprint=fingerprint, fingerprint_fields=fields,
    )  # fmt: skip
    local_run = _recipe_run(make_config(teacher_cache_dir=tmp_path / "cache",
                                        teacher_cache_fingerprint=fingerprint,
                                        teacher_cache_fields=fields, **common))  # fmt: skip
    for key in ("train/loss", "train/loss_kd", "train/grad_norm"):
        assert torch.allclose(_series(remote_run, key), _series(local_run, key), rtol=1e-5), key
    assert ("info", "KD targets from the remote teacher") in [e[:2] for e in remote_run.events]


def test_opd_with_the_remote_teacher_equals_the_live_local_teacher(
    server: TeacherProcess, student_dir: Path, make_config: Callable[..., RecipeConfig]
) -> None:
    common = {"student_path": student_dir, "student_init": None, "max_steps": 2,
              "data_mode": "opd", "loss": "rkl",
              "generation": {"max_new_tokens": 6, "temperature": 1.0}}  # fmt: skip
    # the served name is the model directory's name
    remote = {"url": server.url, "protocol": "openai", "top_k": 4, "model": "tiny-teacher"}
    client = _client(server, student_dir, **remote)
    remote_run = _recipe_run(make_config(teacher_path=None, remote_teacher=remote, **common),
                             client.score)  # fmt: skip
    local_run = _recipe_run(make_config(**common))  # the teacher loaded here, run live
    for key in ("train/loss_kd", "train/opd_reverse_kl"):
        assert torch.allclose(_series(remote_run, key), _series(local_run, key), rtol=1e-4), key


def test_failures_name_the_url(server: TeacherProcess, tiny_teacher_dir: Path) -> None:
    batch = torch.tensor([ROWS[1]]), torch.ones((1, len(ROWS[1])), dtype=torch.long)
    too_wide = _client(server, tiny_teacher_dir, top_k=33)  # above the server's --top-k 32
    with pytest.raises(RemoteTeacherError, match=r"127\.0\.0\.1.*refused the request.*422"):
        too_wide.score(*batch)
    assert too_wide.requests == 0
    wrong_model = _client(server, tiny_teacher_dir, protocol="openai", model="other")
    with pytest.raises(RemoteTeacherError, match="HTTP 404"):
        wrong_model.score(*batch)


def test_a_student_with_another_vocabulary_is_refused(
    server: TeacherProcess, tiny_other_vocab_student: Path, tiny_teacher_dir: Path
) -> None:
    info = httpx.get(f"{server.url}/v1/info", timeout=10).json()
    with pytest.raises(ValueError, match="vocabulary of"):
        check_vocabulary(info, vocab_size=300, tokenizer_sha256=None, url=server.url)
    with pytest.raises(ValueError, match="another tokenizer"):
        check_vocabulary(info, vocab_size=info["vocab_size"], tokenizer_sha256="0" * 64,
                         url=server.url)  # fmt: skip
    # OpenAI protocol: the returned pieces are mapped with the student's tokenizer, and fail.
    client = _client(server, tiny_other_vocab_student, protocol="openai",
                     model=tiny_teacher_dir.name)  # fmt: skip
    row = ROWS[0]
    with pytest.raises(RemoteTeacherError, match="tokenizer"):
        client.score(torch.tensor([row]), torch.ones((1, len(row)), dtype=torch.long))


def test_a_dead_server_fails_after_retries_naming_the_url(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    with teacher_server(tiny_teacher_dir, tmp_path, top_k=8) as proc:
        client = _client(proc, tiny_teacher_dir, top_k=8)
        row = torch.tensor([ROWS[1]])
        mask = torch.ones_like(row)
        assert client.score(row, mask).top_ids.shape == (1, 4, 8)
        proc.kill()
        with pytest.raises(RemoteTeacherError, match=rf"{proc.url}/v1/score failed after 5"):
            client.score(row, mask)


def test_a_server_that_never_answers_times_out_then_fails(tiny_teacher_dir: Path) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel's backlog), never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        spec = {"url": url, "protocol": "distill", "top_k": 4, "timeout_s": 0.5}
        client = RemoteTeacherClient(spec, tokenizer=load_tokenizer(tiny_teacher_dir),
                                     retries=1, backoff_seconds=0.05)  # fmt: skip
        started = time.monotonic()
        with pytest.raises(RemoteTeacherError, match=rf"{url}/v1/score failed after 2.*Timeout"):
            client.score(torch.tensor([[1, 5, 9]]), torch.ones((1, 3), dtype=torch.long))
        assert time.monotonic() - started < 10


def test_onpolicy_fkl_through_the_server_equals_in_process_scoring(
    server: TeacherProcess,
    student_dir: Path,
    tiny_teacher_dir: Path,
    make_config: Callable[..., RecipeConfig],
) -> None:
    common = {"student_path": student_dir, "student_init": None, "teacher_path": None,
              "max_steps": 2, "data_mode": "onpolicy", "lmbda": 1.0,
              "generation": {"max_new_tokens": 6, "temperature": 1.0},
              "remote_teacher": {"url": server.url, "top_k": TOP_K}}  # fmt: skip
    client = _client(server, student_dir)
    over_http = _recipe_run(make_config(**common), client.score)
    teacher = load_causal_lm(tiny_teacher_dir)
    in_process = _recipe_run(
        make_config(**common), lambda ids, mask: score_with_model(teacher, ids, mask, TOP_K)
    )
    assert set(over_http.series("train/onpolicy").values()) == {1.0}
    for key in ("train/loss_kd", "train/grad_norm"):
        assert torch.allclose(_series(over_http, key), _series(in_process, key), rtol=1e-5), key
