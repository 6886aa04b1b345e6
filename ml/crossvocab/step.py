"""The cross-vocabulary side of a training step, composed into ``DistillRecipe`` when the loss
is ``dskd``, ``uld`` or ``mined``: each model reads the same text through its own tokenizer
(``alignment.encode_cross_example``), and the KD term bridges the two vocabularies."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.crossvocab.alignment import CrossExample, collate_cross_examples, encode_cross_example
from ml.crossvocab.dskd import DSKDProjector, dskd_loss, token_embeddings
from ml.crossvocab.mined import build_vocab_map, mined_loss, mined_pairs
from ml.crossvocab.uld import uld_loss
from ml.data.examples import IGNORE_INDEX
from ml.distillation.losses import ce_loss
from ml.distillation.recipe_config import CROSS_VOCAB_LOSSES, RecipeConfig


class CrossVocabStep:
    """Encodes, collates and scores cross-vocabulary batches.

    Batches keep the student's tensors under the usual keys (``input_ids``,
    ``attention_mask``, ``labels``) so the recipe's per-token normalisation is unchanged, and
    add the teacher's under ``teacher_*`` plus the aligned positions.
    """

    def __init__(
        self,
        loss: str,
        *,
        student_tokenizer: PreTrainedTokenizerBase,
        teacher_tokenizer: PreTrainedTokenizerBase,
        teacher: PreTrainedModel,
        projector: DSKDProjector | None,
        temperature: float,
    ) -> None:
        if loss not in CROSS_VOCAB_LOSSES:
            raise ValueError(f"cross-vocabulary loss must be one of {CROSS_VOCAB_LOSSES}")
        self.loss = loss
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.teacher = teacher
        self.projector = projector
        self.temperature = temperature
        self.vocab_map: Tensor | None = None
        if loss == "mined":
            vocab_map = build_vocab_map(student_tokenizer, teacher_tokenizer)
            width = int(teacher.get_output_embeddings().weight.shape[0])
            if width > vocab_map.shape[0]:  # logits wider than the tokenizer: map the rest to 0
                pad = torch.zeros(width - vocab_map.shape[0], dtype=vocab_map.dtype)
                vocab_map = torch.cat([vocab_map, pad])
            self.vocab_map = vocab_map
        self._pairs: list[list[tuple[int, int]]] = []

    def encode(self, records: list[tuple[str, str]], max_length: int) -> list[CrossExample]:
        examples = [
            encode_cross_example(self.student_tokenizer, self.teacher_tokenizer, p, r, max_length)
            for p, r in records
        ]
        if self.loss == "mined":  # MinED aligns by edit distance, not only identical spans
            self._pairs = [
                mined_pairs(e, self.student_tokenizer, self.teacher_tokenizer) for e in examples
            ]
        else:
            self._pairs = [e.aligned_pairs for e in examples]
        return examples

    def collate(self, examples: list[CrossExample], indices: list[int]) -> dict[str, Tensor]:
        batch = collate_cross_examples(
            examples,
            student_pad_id=int(self.student_tokenizer.pad_token_id),  # type: ignore[arg-type]
            teacher_pad_id=int(self.teacher_tokenizer.pad_token_id),  # type: ignore[arg-type]
            pairs=[self._pairs[i] for i in indices],
        )
        for key in ("input_ids", "attention_mask", "labels"):
            batch[key] = batch.pop(f"student_{key}")
        return batch

    def sums(
        self, student: PreTrainedModel, batch: dict[str, Tensor], kd_params: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """``(CE_sum, KD_sum)`` over the student's response tokens of one micro-batch."""
        hidden = self.loss == "dskd"
        s_out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=hidden)  # fmt: skip
        logits = s_out.logits[:, :-1]
        labels = batch["labels"][:, 1:]
        ce_sum = ce_loss(logits, labels, reduction="sum")
        t_ids, t_labels = batch["teacher_input_ids"], batch["teacher_labels"]
        with torch.no_grad():
            t_out = self.teacher(input_ids=t_ids, attention_mask=batch["teacher_attention_mask"],
                                 output_hidden_states=hidden)  # fmt: skip
        t_logits = t_out.logits[:, :-1]
        if self.loss == "uld":
            kd_sum = uld_loss(
                logits, t_logits, labels != IGNORE_INDEX, t_labels[:, 1:] != IGNORE_INDEX,
                temperature=self.temperature, reduction="sum",
            )  # fmt: skip
        elif self.loss == "mined":
            assert self.vocab_map is not None
            kd_sum = mined_loss(
                logits, t_logits, batch["student_index"], batch["teacher_index"],
                batch["pair_mask"], self.vocab_map.to(logits.device),
                temperature=self.temperature, reduction="sum",
            )  # fmt: skip
        else:
            assert self.projector is not None
            s_emb, t_emb = student.get_input_embeddings(), self.teacher.get_input_embeddings()
            ids = batch["input_ids"]
            out = dskd_loss(
                self.projector,
                student_hidden=s_out.hidden_states[-1][:, :-1],
                student_input_embeds=token_embeddings(s_emb, ids[:, :-1]),
                student_target_embeds=token_embeddings(s_emb, batch["labels"][:, 1:]),
                student_labels=labels,
                student_logits=logits,
                student_head_weight=student.get_output_embeddings().weight,
                teacher_hidden=t_out.hidden_states[-1][:, :-1],
                teacher_input_embeds=token_embeddings(t_emb, t_ids[:, :-1]),
                teacher_target_embeds=token_embeddings(t_emb, t_labels[:, 1:]),
                teacher_labels=t_labels[:, 1:],
                teacher_logits=t_logits,
                teacher_head_weight=self.teacher.get_output_embeddings().weight,
                temperature=self.temperature,
                **kd_params,
            )
            kd_sum = out.loss_sum
        return ce_sum, kd_sum


def build_cross_step(
    config: RecipeConfig,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
) -> tuple[CrossVocabStep, torch.nn.Module]:
    """The step, and the module the optimizer and checkpoints hold: the student, or for
    ``dskd`` the student with its projectors (trained together, saved together)."""
    assert config.teacher_path is not None
    projector = None
    trainable: torch.nn.Module = student
    if config.loss == "dskd":
        projector = DSKDProjector(
            student_dim=int(student.config.hidden_size),
            teacher_dim=int(teacher.config.hidden_size),
        ).to(device)
        trainable = torch.nn.ModuleDict({"student": student, "projector": projector})
    step = CrossVocabStep(
        config.loss,
        student_tokenizer=student_tokenizer,
        teacher_tokenizer=teacher_tokenizer,
        teacher=teacher,
        projector=projector,
        temperature=config.temperature,
    )
    return step, trainable
