from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from ml.distillation.lora import (
    LoraSettings,
    apply_lora,
    linear_module_names_for_dir,
    save_lora_student,
)
from ml.loading import load_causal_lm, load_tokenizer


def test_module_names_from_config_match_the_real_model(tiny_teacher_dir: Path) -> None:
    names = linear_module_names_for_dir(tiny_teacher_dir)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    assert "lm_head" in names and "embed_tokens" not in names


def test_unknown_target_is_refused(tiny_teacher_dir: Path) -> None:
    model = load_causal_lm(tiny_teacher_dir)
    with pytest.raises(ValueError, match="not linear modules of the student"):
        apply_lora(model, LoraSettings(target_modules=("q_proj", "attn_c")))


def test_only_adapter_trains_and_merge_reproduces_outputs(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = load_causal_lm(tiny_teacher_dir)
    tokenizer = load_tokenizer(tiny_teacher_dir)
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter non-zero, as training would
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    save_lora_student(peft_model, tokenizer, tmp_path / "merged", merge=True)
    merged = load_causal_lm(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    assert (tmp_path / "merged" / "adapter" / "adapter_model.safetensors").exists()
    # the saved adapter, applied to a fresh copy of the base, gives the same outputs again
    adapter = tmp_path / "merged" / "adapter"
    reloaded = PeftModel.from_pretrained(load_causal_lm(tiny_teacher_dir), adapter)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-4)


def test_unmerged_save_keeps_the_base_weights(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    base = load_causal_lm(tiny_teacher_dir)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = apply_lora(base, LoraSettings(r=2, target_modules=("q_proj",)))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
    save_lora_student(peft_model, load_tokenizer(tiny_teacher_dir), tmp_path / "m", merge=False)
    saved = load_causal_lm(tmp_path / "m").state_dict()
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
