"""The facts base model builder: both architectures save, reload and are reused when cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.data.facts_model import build_facts_model
from ml.editing.locate import projection_site
from ml.loading import load_causal_lm, load_tokenizer


@pytest.mark.parametrize(("arch", "projection"), [("llama", "down_proj"), ("gpt2", "c_proj")])
def test_builds_reloads_and_reuses(tmp_path: Path, arch: str, projection: str) -> None:
    settings = {"arch": arch, "hidden_size": 32, "num_layers": 2, "steps": 20, "vocab_size": 400}
    manifest = build_facts_model(tmp_path, log=lambda _: None, **settings)  # type: ignore[arg-type]
    assert manifest["settings"]["arch"] == arch
    assert 0.0 <= manifest["known_fact_accuracy"]["teacher_forced"] <= 1.0
    model = load_causal_lm(tmp_path)
    assert load_tokenizer(tmp_path).bos_token_id is not None
    assert projection_site(model, 1).name.endswith(f"mlp.{projection}")
    weights = sorted(tmp_path.glob("*.safetensors"))
    stamp = [w.stat().st_mtime_ns for w in weights]
    again = build_facts_model(tmp_path, log=lambda _: None, **settings)  # type: ignore[arg-type]
    assert again == manifest
    assert [w.stat().st_mtime_ns for w in weights] == stamp  # reused, not retrained
