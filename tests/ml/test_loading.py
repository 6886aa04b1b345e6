from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from ml.data.tokenizer import tokenizer_sha256
from ml.loading import (
    UnsafeModelError,
    check_model_dir,
    init_student_from_config,
    init_student_from_teacher,
    inspect_model_dir,
    load_causal_lm,
    load_tokenizer,
    save_model,
)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_check_model_dir_accepts_a_safetensors_dir(tiny_teacher_dir: Path) -> None:
    check_model_dir(tiny_teacher_dir)


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "w.pt", "w.pth", "x.pkl", "c.ckpt"])
def test_pickle_weights_are_refused(
    tiny_teacher_dir: Path, tmp_path: Path, pickle_name: str
) -> None:
    model_dir = _copy(tiny_teacher_dir, tmp_path / "m")
    (model_dir / pickle_name).write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeModelError, match="pickle"):
        check_model_dir(model_dir)
    with pytest.raises(UnsafeModelError):
        load_causal_lm(model_dir)


def test_missing_weights_and_remote_code_are_refused(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    model_dir = _copy(tiny_teacher_dir, tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeModelError, match="auto_map"):
        check_model_dir(model_dir)
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(UnsafeModelError, match="safetensors"):
        check_model_dir(model_dir)
    with pytest.raises(UnsafeModelError):
        check_model_dir(tmp_path / "absent")


def test_inspect_reads_headers_without_loading(tiny_teacher_dir: Path) -> None:
    info = inspect_model_dir(tiny_teacher_dir)
    model = load_causal_lm(tiny_teacher_dir)
    tokenizer = load_tokenizer(tiny_teacher_dir)
    assert info.architecture == "LlamaForCausalLM"
    assert info.model_type == "llama"
    assert info.num_parameters == model.num_parameters()
    assert info.vocab_size == len(tokenizer)
    assert info.num_layers == 2
    assert info.tokenizer_sha256 == tokenizer_sha256(tokenizer)


def test_load_with_dtype_and_save_round_trip(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    model = load_causal_lm(tiny_teacher_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training
    save_model(model, load_tokenizer(tiny_teacher_dir), tmp_path / "out")
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir() if p.suffix != ".json") == [
        ".safetensors"
    ]
    again = load_causal_lm(tmp_path / "out", dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def _four_layer_teacher() -> PreTrainedModel:
    torch.manual_seed(0)
    config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 5}
    config |= {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}
    return init_student_from_config(config, vocab_size=50)


def test_student_from_every_2nd_layer_copies_the_right_tensors() -> None:
    teacher = _four_layer_teacher()
    student = init_student_from_teacher(teacher, every_k=2)
    assert student.config.num_hidden_layers == 3  # ceil(5 / 2): layers 0, 2, 4
    assert teacher.config.num_hidden_layers == 5
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for student_index, teacher_index in enumerate((0, 2, 4)):
        for suffix in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            a = student_state[f"model.layers.{student_index}.{suffix}"]
            b = teacher_state[f"model.layers.{teacher_index}.{suffix}"]
            assert torch.equal(a, b)
            assert a.data_ptr() != b.data_ptr()  # copied, not shared
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(student_state[name], teacher_state[name])
    ids = torch.tensor([[1, 5, 7]])
    assert student(input_ids=ids).logits.shape == (1, 3, 50)


def test_student_from_teacher_rejects_other_layouts() -> None:
    class NotLlama(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="model.layers"):
        init_student_from_teacher(NotLlama(), every_k=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        init_student_from_teacher(_four_layer_teacher(), every_k=0)


def test_student_from_config_is_seeded_by_the_caller() -> None:
    config = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    config |= {"num_attention_heads": 2, "vocab_size": 999}
    torch.manual_seed(3)
    a = init_student_from_config(config, vocab_size=40)
    torch.manual_seed(3)
    b = init_student_from_config(config, vocab_size=40)
    assert a.config.vocab_size == 40
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
