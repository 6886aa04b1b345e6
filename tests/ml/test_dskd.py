"""DSKD with cross-model attention: shapes, masks, gradients and reductions to plain KD."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ml.crossvocab.dskd import DSKDProjector, dskd_loss, token_embeddings
from ml.distillation.losses import ce_loss, kd_loss

B, S_S, S_T, D_S, D_T, V_S, V_T = 2, 5, 7, 8, 12, 11, 17


def _batch(seed: int = 0) -> dict[str, Any]:
    """Random tensors for ``dskd_loss``; the last student and teacher positions are padding."""
    g = torch.Generator().manual_seed(seed)
    student_labels = torch.randint(0, V_S, (B, S_S), generator=g)
    teacher_labels = torch.randint(0, V_T, (B, S_T), generator=g)
    student_labels[0, :1] = -100  # a prompt position
    student_labels[:, -1] = -100
    teacher_labels[:, -2:] = -100
    return {
        "student_hidden": torch.randn(B, S_S, D_S, generator=g, requires_grad=True),
        "student_input_embeds": torch.randn(B, S_S, D_S, generator=g),
        "student_target_embeds": torch.randn(B, S_S, D_S, generator=g),
        "student_labels": student_labels,
        "student_head_weight": torch.randn(V_S, D_S, generator=g),
        "teacher_hidden": torch.randn(B, S_T, D_T, generator=g, requires_grad=True),
        "teacher_input_embeds": torch.randn(B, S_T, D_T, generator=g, requires_grad=True),
        "teacher_target_embeds": torch.randn(B, S_T, D_T, generator=g, requires_grad=True),
        "teacher_labels": teacher_labels,
        "teacher_head_weight": torch.randn(V_T, D_T, generator=g, requires_grad=True),
    }


def _projector(seed: int = 0) -> DSKDProjector:
    torch.manual_seed(seed)
    return DSKDProjector(D_S, D_T)


def test_shapes_with_different_vocabularies_and_hidden_sizes() -> None:
    batch = _batch()
    out = dskd_loss(_projector(), **batch, gate_on_t2s_correct=False, return_attention=True)
    assert out.attention is not None
    assert out.attention.t2s_hidden.shape == (B, S_S, D_S)
    assert out.attention.s2t_hidden.shape == (B, S_T, D_T)
    assert out.attention.t2s_weights.shape == (B, S_S, S_T)
    assert out.attention.s2t_weights.shape == (B, S_T, S_S)
    assert out.n_tokens == int((batch["student_labels"] != -100).sum()) == 7
    assert out.n_teacher_tokens == 10
    parts = out.t2s_ce_sum + out.student_space_kd_sum + out.teacher_space_kd_sum
    torch.testing.assert_close(out.loss_sum, parts)
    for value in (out.t2s_ce_sum, out.student_space_kd_sum, out.teacher_space_kd_sum):
        assert value.shape == () and value.dtype == torch.float32 and value > 0
    assert 0.0 <= out.t2s_accuracy <= 1.0


def test_attention_rows_sum_to_one_over_unmasked_positions() -> None:
    batch = _batch()
    teacher_mask = torch.ones(B, S_T, dtype=torch.bool)
    teacher_mask[1, :2] = False  # a teacher prompt position, through the mask argument
    out = dskd_loss(_projector(), **batch, teacher_mask=teacher_mask, return_attention=True)
    assert out.attention is not None
    s_valid = batch["student_labels"] != -100
    t_valid = (batch["teacher_labels"] != -100) & teacher_mask
    t2s, s2t = out.attention.t2s_weights, out.attention.s2t_weights
    torch.testing.assert_close(t2s.sum(-1), s_valid.float())
    torch.testing.assert_close(s2t.sum(-1), t_valid.float())
    assert (t2s.masked_select(~t_valid.unsqueeze(1).expand_as(t2s)) == 0).all()
    assert (s2t.masked_select(~s_valid.unsqueeze(1).expand_as(s2t)) == 0).all()


def test_attention_matches_a_per_position_loop() -> None:
    batch, projector = _batch(), _projector()
    out = dskd_loss(projector, **batch, return_attention=True)
    assert out.attention is not None
    s_valid = batch["student_labels"] != -100
    t_valid = batch["teacher_labels"] != -100
    b, i = 1, 2
    cols = t_valid[b].nonzero().squeeze(-1)
    t_in, t_tgt = batch["teacher_input_embeds"].detach(), batch["teacher_target_embeds"].detach()
    t_hidden = batch["teacher_hidden"].detach()
    index = torch.cat([t_in, t_tgt], -1)[t_valid]
    keys = torch.cat([t_in[b], t_tgt[b]], -1)[cols] / index.std()
    values = t_hidden[b, cols] / t_hidden[t_valid].std() + t_tgt[b, cols] / t_tgt[t_valid].std()
    with torch.no_grad():
        query = projector.query(
            torch.cat([batch["student_input_embeds"][b, i], batch["student_target_embeds"][b, i]])
        )
        weights = torch.softmax(keys @ query / math.sqrt(2 * D_T), dim=0)
        expected = weights @ projector.t2s(values)
    assert s_valid[b, i]
    torch.testing.assert_close(out.attention.t2s_weights[b, i, cols], weights)
    torch.testing.assert_close(out.attention.t2s_hidden[b, i].detach(), expected)


def test_padded_teacher_positions_do_not_change_the_loss() -> None:
    batch, projector = _batch(), _projector()
    padded = (batch["teacher_labels"] == -100).unsqueeze(-1)
    changed = dict(batch)
    for name in ("teacher_hidden", "teacher_input_embeds", "teacher_target_embeds"):
        noise = 1e3 * torch.randn_like(batch[name])
        changed[name] = torch.where(padded, noise, batch[name].detach())
    logits = torch.randn(B, S_T, V_T)
    changed_logits = torch.where(padded, 1e3 * torch.randn_like(logits), logits)
    reference = dskd_loss(projector, **batch, teacher_logits=logits)
    out = dskd_loss(projector, **changed, teacher_logits=changed_logits)
    torch.testing.assert_close(out.loss_sum, reference.loss_sum)
    torch.testing.assert_close(out.teacher_space_kd_sum, reference.teacher_space_kd_sum)


def test_all_masked_gives_zero_and_finite_gradients() -> None:
    for side in ("student_labels", "teacher_labels"):
        batch, projector = _batch(), _projector()
        batch[side] = torch.full_like(batch[side], -100)
        out = dskd_loss(projector, **batch)
        assert out.n_tokens == 0 and out.n_teacher_tokens == 0 and out.t2s_accuracy == 0.0
        for value in (out.t2s_ce_sum, out.student_space_kd_sum, out.teacher_space_kd_sum):
            assert value.item() == 0.0
        out.loss_sum.backward()
        assert out.loss_sum.item() == 0.0
        grad = batch["student_hidden"].grad
        assert grad is not None and torch.isfinite(grad).all()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in projector.parameters())


def test_a_sequence_without_teacher_positions_is_left_out() -> None:
    batch = _batch()
    batch["teacher_labels"][1] = -100
    out = dskd_loss(_projector(), **batch)
    assert out.n_tokens == int((batch["student_labels"][0] != -100).sum())
    assert out.n_teacher_tokens == int((batch["teacher_labels"][0] != -100).sum())


def test_gradients_reach_student_and_projectors_not_teacher() -> None:
    batch, projector = _batch(), _projector()
    out = dskd_loss(projector, **batch, gate_on_t2s_correct=False)
    out.loss_sum.backward()
    assert batch["student_hidden"].grad is not None
    assert batch["student_hidden"].grad.abs().sum() > 0
    for name, parameter in projector.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for name in (
        "teacher_hidden",
        "teacher_input_embeds",
        "teacher_target_embeds",
        "teacher_head_weight",
    ):
        assert batch[name].grad is None, name


def _identity_projector(dim: int) -> DSKDProjector:
    projector = DSKDProjector(dim, dim)
    with torch.no_grad():
        for layer in (projector.t2s, projector.s2t):
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
    return projector


@pytest.mark.parametrize(("method", "params"), [("fkl", {}), ("jsd", {"beta": 0.3})])
def test_identity_projectors_and_diagonal_attention_reduce_to_same_vocab_kd(
    method: str, params: dict[str, Any]
) -> None:
    # One tiny LM shape, shared vocabulary: embedding -> tanh layer -> head. The teacher's
    # states are scaled to unit std so N(H_t) = H_t, and its target embeddings are zero, so the
    # value is exactly H_t; an attention forced to the diagonal then hands H_t to the student.
    g = torch.Generator().manual_seed(3)
    dim, vocab, seq = 6, 9, 5
    embed, head = torch.randn(vocab, dim, generator=g), torch.randn(vocab, dim, generator=g)
    ids = torch.randint(0, vocab, (B, seq + 1), generator=g)
    inputs, labels = ids[:, :-1], ids[:, 1:].clone()
    labels[0, 0] = -100
    mask = labels != -100

    def hidden(layer: torch.Tensor) -> torch.Tensor:
        return torch.tanh(embed[inputs] @ layer)

    teacher_hidden = hidden(torch.randn(dim, dim, generator=g))
    teacher_hidden = teacher_hidden / teacher_hidden[mask].std()
    student_hidden = hidden(torch.randn(dim, dim, generator=g)).requires_grad_()
    student_logits, teacher_logits = student_hidden @ head.T, teacher_hidden @ head.T
    out = dskd_loss(
        _identity_projector(dim),
        student_hidden=student_hidden,
        student_input_embeds=embed[inputs],
        student_target_embeds=embed[labels.clamp(min=0)],
        student_labels=labels,
        student_head_weight=head,
        teacher_hidden=teacher_hidden,
        teacher_input_embeds=embed[inputs],
        teacher_target_embeds=torch.zeros(B, seq, dim),
        teacher_labels=labels,
        teacher_head_weight=head,
        method=method,
        temperature=2.0,
        gate_on_t2s_correct=False,
        scores_override=1e4 * torch.eye(seq).expand(B, seq, seq),
        **params,
    )
    kwargs: dict[str, Any] = {
        "method": method,
        "mask": mask,
        "temperature": 2.0,
        "reduction": "sum",
        **params,
    }
    expected = kd_loss(student_logits, teacher_logits, **kwargs)
    torch.testing.assert_close(out.student_space_kd_sum, expected)
    # Teacher space: P_s2t(H_s) on the diagonal through the shared head = the student logits.
    torch.testing.assert_close(out.teacher_space_kd_sum, expected)
    ce = ce_loss(teacher_logits, labels, reduction="sum")
    torch.testing.assert_close(out.t2s_ce_sum, ce)
    assert out.n_tokens == int(mask.sum())


def test_projector_learns_lower_t2s_ce() -> None:
    batch, projector = _batch(seed=5), _projector(seed=5)
    optimizer = torch.optim.Adam(projector.parameters(), lr=3e-2)
    history = []
    for _ in range(25):
        out = dskd_loss(projector, **batch)
        history.append(out.t2s_ce_sum.item() / out.n_tokens)
        optimizer.zero_grad()
        out.t2s_ce_sum.backward()
        optimizer.step()
    assert history[-1] < 0.5 * history[0]
    assert dskd_loss(projector, **batch).t2s_accuracy > 0.5


def test_projector_state_dict_is_plain_tensors() -> None:
    state = DSKDProjector(D_S, D_T).state_dict()
    assert set(state) == {f"{n}.{p}" for n in ("query", "t2s", "s2t") for p in ("weight", "bias")}
    assert state["query.weight"].shape == (2 * D_T, 2 * D_S)
    assert all(type(v) is torch.Tensor for v in state.values())


def test_two_hf_models_with_different_vocabularies() -> None:
    # How a recipe step wires DSKD: shifted hidden states, embeddings of inputs and targets.
    def tiny(vocab: int, hidden: int) -> LlamaForCausalLM:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
        return LlamaForCausalLM(config)

    torch.manual_seed(0)
    student, teacher = tiny(V_S + 20, 16), tiny(V_T + 40, 24)
    s_ids, t_ids = torch.randint(0, V_S + 20, (2, 6)), torch.randint(0, V_T + 40, (2, 9))
    s_labels, t_labels = s_ids.clone(), t_ids.clone()
    s_labels[:, :2], t_labels[:, :3] = -100, -100
    s_out = student(input_ids=s_ids, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(input_ids=t_ids, output_hidden_states=True)
    head = student.get_output_embeddings().weight
    torch.testing.assert_close(s_out.hidden_states[-1] @ head.T, s_out.logits)
    out = dskd_loss(
        DSKDProjector(16, 24),
        student_hidden=s_out.hidden_states[-1][:, :-1],
        student_input_embeds=token_embeddings(student.get_input_embeddings(), s_ids[:, :-1]),
        student_target_embeds=token_embeddings(student.get_input_embeddings(), s_labels[:, 1:]),
        student_labels=s_labels[:, 1:],
        student_head_weight=head,
        student_logits=s_out.logits[:, :-1],
        teacher_hidden=t_out.hidden_states[-1][:, :-1],
        teacher_input_embeds=token_embeddings(teacher.get_input_embeddings(), t_ids[:, :-1]),
        teacher_target_embeds=token_embeddings(teacher.get_input_embeddings(), t_labels[:, 1:]),
        teacher_labels=t_labels[:, 1:],
        teacher_head_weight=teacher.get_output_embeddings().weight,
        teacher_logits=t_out.logits[:, :-1],
    )
    out.loss_sum.backward()
    assert out.n_tokens == 8 and out.n_teacher_tokens == 12
    assert torch.isfinite(out.loss_sum)
    assert student.model.norm.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
