"""Where a training step's teacher distribution comes from: one teacher model run live,
several teachers (mixed, or one per example by route), a sparse cache of targets captured
earlier so the teacher does not run at all, or a remote teacher asked for its top-k per batch
(:mod:`ml.distillation.remote_teacher`; the same sparse targets as a top-k cache)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ml.distillation.multi_teacher import mix_teacher_logits, route_teacher_logits
from ml.distillation.recipe_config import RecipeConfig
from ml.distillation.remote_teacher import RemoteTeacher, ScoreFn
from ml.distillation.teacher_cache import TeacherCacheReader
from ml.loading import load_causal_lm


class TeacherSignal:
    """Composes the teachers (or the cache) a recipe distils from.

    ``routes`` holds a teacher index per training example; when given, each example takes its
    own teacher's logits, else the teachers are mixed by ``weights``.
    """

    def __init__(
        self,
        teachers: list[PreTrainedModel],
        *,
        weights: list[float] | None = None,
        routes: list[int] | None = None,
        cache: TeacherCacheReader | None = None,
        remote: RemoteTeacher | None = None,
    ) -> None:
        self.teachers = teachers
        self.weights = weights or [1.0] * len(teachers)
        self.routes = routes
        self.cache = cache
        self.remote = remote

    @property
    def sparse_mode(self) -> str | None:
        """``topk``/``sampled`` when KD reads sparse targets (a cache, a remote teacher)."""
        if self.cache is not None:
            return self.cache.mode
        return "topk" if self.remote is not None else None

    @property
    def primary(self) -> PreTrainedModel | None:
        return self.teachers[0] if self.teachers else None

    @torch.no_grad()
    def logits(
        self, inputs: Mapping[str, Tensor], example_indices: list[int], temperature: float
    ) -> Tensor:
        """Teacher logits ``(batch, seq, vocab)`` for a batch of training examples (any loss
        can take them: a mixture comes back as ``T·log p_mix``, see ``mix_teacher_logits``)."""
        outputs = [teacher(**inputs).logits for teacher in self.teachers]
        if len(outputs) == 1:
            return outputs[0]
        if self.routes is not None:
            route = torch.tensor(
                [self.routes[i] for i in example_indices], device=outputs[0].device
            )
            return route_teacher_logits(outputs, route)
        return mix_teacher_logits(outputs, self.weights, temperature)

    def sparse_targets(
        self,
        example_indices: list[int],
        device: torch.device,
        batch: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sparse ``(token_ids, weights)`` ``(n_response_tokens, K)`` of these examples, in the
        order ``logits[mask]`` selects positions (example by example, increasing position):
        read from the cache, or asked of the remote teacher for ``batch`` (one round trip)."""
        if self.cache is None:
            assert self.remote is not None and batch is not None
            return self.remote.sparse_targets(batch, device)
        token_ids, weights = self.cache.targets(example_indices)
        return token_ids.to(device), weights.to(device)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.teachers = []


def build_teacher_signal(
    config: RecipeConfig,
    teacher: PreTrainedModel | None,
    n_examples: int,
    event: Callable[[str, str, dict[str, Any]], None],
    remote_score: ScoreFn | None = None,
) -> TeacherSignal:
    """The teacher signal a config asks for: none for ``ce``; a sparse cache opened against its
    fingerprint (and checked to hold exactly ``n_examples``); the remote teacher behind
    ``remote_score`` when the config names one; or the live teacher(s)."""
    if config.loss == "ce":
        return TeacherSignal([])
    if config.teacher_cache_dir is not None:
        assert config.teacher_cache_fingerprint is not None
        reader = TeacherCacheReader.open(
            config.teacher_cache_dir,
            expected_fingerprint=config.teacher_cache_fingerprint,
            expected_fields=config.teacher_cache_fields,
        )
        if reader.n_examples != n_examples:
            raise ValueError(
                f"the teacher cache holds {reader.n_examples} examples, the run has {n_examples}"
            )
        event("info", "KD targets from the teacher cache", {"mode": reader.mode})
        return TeacherSignal([], cache=reader)
    if config.remote_teacher is not None:
        if remote_score is None:
            raise ValueError("the config names a remote teacher but no score function was given")
        top_k = int(config.remote_teacher["top_k"])
        event("info", "KD targets from the remote teacher",
              {"url": config.remote_teacher["url"], "top_k": top_k})  # fmt: skip
        return TeacherSignal([], remote=RemoteTeacher(remote_score, top_k))
    assert teacher is not None
    teachers = [teacher]
    for path in config.extra_teacher_paths:
        extra = load_causal_lm(path, device=config.device)
        extra.requires_grad_(False)
        teachers.append(extra)
    return TeacherSignal(teachers, weights=config.teacher_weights, routes=config.train_routes)
