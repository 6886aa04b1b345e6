"""Where a training step's teacher distribution comes from: one teacher model run live,
several teachers (mixed, or one per example by route), or a sparse cache of targets captured
earlier so the teacher does not run at all."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ml.distillation.multi_teacher import mix_teacher_logits, route_teacher_logits
from ml.distillation.teacher_cache import TeacherCacheReader


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
    ) -> None:
        self.teachers = teachers
        self.weights = weights or [1.0] * len(teachers)
        self.routes = routes
        self.cache = cache

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
        self, example_indices: list[int], device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Cached ``(token_ids, weights)`` ``(n_response_tokens, K)`` of these examples, in the
        order ``logits[mask]`` selects positions (example by example, increasing position)."""
        assert self.cache is not None
        token_ids, weights = self.cache.targets(example_indices)
        return token_ids.to(device), weights.to(device)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.teachers = []
