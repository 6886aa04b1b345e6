"""The loss side of one optimizer step, composed into :class:`DistillRecipe`: which batches
the step trains on (the data mode) and the CE / KD sums of each micro-batch, whatever the
teacher signal is (one live teacher, several, a sparse cache, or opd's sampled tokens)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.crossvocab.step import CrossVocabStep
from ml.data.examples import IGNORE_INDEX
from ml.distillation.chunked import shifted_model_kd_ce_sums
from ml.distillation.data_modes import (
    onpolicy_batch,
    opd_loss,
    opd_reverse_kl,
    prompt_ids_from_batch,
    sampled_token_logprobs,
    skd_batch,
    step_generator,
    use_onpolicy,
)
from ml.distillation.losses import ce_loss, kd_loss
from ml.distillation.recipe_config import RecipeConfig
from ml.distillation.sampling import GenerationSettings
from ml.distillation.sparse_targets import sparse_kd_loss
from ml.distillation.teacher_signal import TeacherSignal

MicroBatch = tuple[dict[str, Tensor], list[int]]  # (collated batch, training example indices)


class StepLosses:
    def __init__(
        self,
        config: RecipeConfig,
        signal: TeacherSignal,
        tokenizer: PreTrainedTokenizerBase,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        cross: CrossVocabStep | None = None,
    ) -> None:
        self.cross = cross
        self.config = config
        self.signal = signal
        self.tokenizer = tokenizer
        self.autocast = autocast

    def batches(
        self, student: PreTrainedModel, micro_batches: list[MicroBatch], step: int
    ) -> tuple[list[MicroBatch], bool, dict[str, float]]:
        """This step's batches under the data mode: the dataset's, or samples generated from
        their prompts (``onpolicy`` on a seeded coin, ``opd`` and ``skd`` always). Every draw is
        seeded by (seed, step), so a resumed run generates exactly what the first one would."""
        cfg = self.config
        if cfg.data_mode == "offline":
            return micro_batches, False, {}
        if cfg.data_mode == "onpolicy":
            on = use_onpolicy(cfg.lmbda, step_generator(cfg.seed, step, "onpolicy-coin"))
            if not on:
                return micro_batches, False, {"train/onpolicy": 0.0}
        settings = GenerationSettings(**cfg.generation)
        out: list[MicroBatch] = []
        rates: list[float] = []
        for i, (batch, indices) in enumerate(micro_batches):
            prompts = prompt_ids_from_batch(batch)
            generator = step_generator(cfg.seed, step, f"sample-{i}")
            with self.autocast():
                if cfg.data_mode == "skd":
                    teacher = self.signal.primary
                    assert teacher is not None
                    sampled, rate = skd_batch(
                        student, teacher, self.tokenizer, prompts, settings,
                        top_k=cfg.skd_top_k, generator=generator, max_length=cfg.max_length,
                    )  # fmt: skip
                    rates.append(rate)
                else:
                    sampled = onpolicy_batch(
                        student, self.tokenizer, prompts, settings,
                        generator=generator, max_length=cfg.max_length,
                    )  # fmt: skip
            out.append((sampled, indices))
        values = {"train/onpolicy": 1.0}
        if rates:
            values["train/skd_acceptance"] = sum(rates) / len(rates)
        return out, True, values

    def sums(
        self,
        student: PreTrainedModel,
        batch: dict[str, Tensor],
        indices: list[int],
        kd_params: dict[str, float],
    ) -> tuple[Tensor, Tensor | None, float]:
        """``(CE_sum, KD_sum or None for "ce", opd reverse-KL estimate)`` of one micro-batch
        over its response tokens."""
        cfg = self.config
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        if self.cross is not None:
            ce_sum, kd_sum = self.cross.sums(student, batch, kd_params)
            return ce_sum, kd_sum, 0.0
        if cfg.kd_chunk_tokens and cfg.loss != "ce":
            # Chunked: no (batch, seq, vocab) logits; only hidden states and the lm heads.
            teacher = self.signal.primary
            assert teacher is not None
            kd_sum, ce_sum = shifted_model_kd_ce_sums(
                student, teacher, inputs, labels, method=cfg.loss,
                temperature=cfg.temperature, chunk_tokens=cfg.kd_chunk_tokens, params=kd_params,
            )  # fmt: skip
            return ce_sum, kd_sum, 0.0
        logits = student(**inputs).logits[:, :-1]
        if cfg.loss == "ce":
            return ce_loss(logits, labels, reduction="sum"), None, 0.0
        # With alpha_ce 0 the CE sum is only a metric: no graph, so no backward through it.
        with contextlib.nullcontext() if cfg.alpha_ce else torch.no_grad():
            ce_sum = ce_loss(logits, labels, reduction="sum")
        tokens = batch["input_ids"][:, 1:]
        remote = self.signal.remote
        if remote is not None and cfg.data_mode == "opd":  # the sampled tokens' log p, exact
            return ce_sum, *_opd_sums(logits, tokens, remote.token_logprobs(batch, logits.device),
                                      mask)  # fmt: skip
        if (mode := self.signal.sparse_mode) is not None:  # a cache, or a remote top-k
            token_ids, weights = self.signal.sparse_targets(indices, logits.device, batch)
            entropy = None
            if self.signal.cache is not None and mode == "sampled":
                entropy = self.signal.cache.teacher_entropy(indices).to(logits.device)
            kd_sum = sparse_kd_loss(
                logits[mask], token_ids, weights, mode=mode,
                temperature=cfg.temperature, reduction="sum", teacher_entropy=entropy,
            )  # fmt: skip
            return ce_sum, kd_sum, 0.0
        teacher_logits = self.signal.logits(inputs, indices, cfg.temperature)[:, :-1]
        if cfg.data_mode == "opd":
            teacher_lp = sampled_token_logprobs(teacher_logits, tokens)
            return ce_sum, *_opd_sums(logits, tokens, teacher_lp, mask)
        kd_sum = kd_loss(
            logits, teacher_logits, method=cfg.loss, mask=mask, temperature=cfg.temperature,
            reduction="sum", **kd_params,
        )  # fmt: skip
        return ce_sum, kd_sum, 0.0


def _opd_sums(
    logits: Tensor, tokens: Tensor, teacher_lp: Tensor, mask: Tensor
) -> tuple[Tensor, float]:
    """opd's ``(loss sum, reverse-KL estimate)`` from shifted student logits ``(B, T-1, V)`` and
    the teacher's log-probabilities of the same ``tokens`` ``(B, T-1)``."""
    student_lp = sampled_token_logprobs(logits, tokens)
    kd_sum = opd_loss(student_lp, teacher_lp, mask, reduction="sum")
    return kd_sum, float(opd_reverse_kl(student_lp, teacher_lp, mask, reduction="sum"))
