"""POST /v1/models/{id}/generate: greedy text equal to transformers' own generate, seeded
sampling reproducible, DISCO with alpha 0 equal to greedy, and its errors naming the field."""

from __future__ import annotations

import pytest
import torch

PROMPTS = ["Name the capital city of Dunholt.", "Add 15 and 14."]


@pytest.fixture
def model_id(api, auth, tiny_teacher):
    return api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)}).json()[
        "id"
    ]


def _generate(api, auth, model_id, **body):
    return api.client.post(f"/v1/models/{model_id}/generate", headers=auth, json=body)


def test_greedy_matches_transformers_generate(api, auth, model_id, tiny_teacher):
    from ml.loading import load_causal_lm, load_tokenizer

    response = _generate(api, auth, model_id, prompts=PROMPTS, max_new_tokens=6)
    assert response.status_code == 200, response.text
    got = response.json()["completions"]
    model, tokenizer = load_causal_lm(tiny_teacher), load_tokenizer(tiny_teacher)
    for prompt, text in zip(PROMPTS, got, strict=True):
        ids = torch.tensor(
            [[tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]]
        )
        out = model.generate(ids, max_new_tokens=6, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        assert text == expected


def test_sampling_is_seeded(api, auth, model_id):
    body = {"prompts": PROMPTS, "max_new_tokens": 8, "decoding": "sample", "temperature": 1.5}
    first = _generate(api, auth, model_id, seed=3, **body).json()["completions"]
    assert _generate(api, auth, model_id, seed=3, **body).json()["completions"] == first


def test_disco_needs_a_model_to_contrast_with(api, auth, model_id):
    response = _generate(api, auth, model_id, prompts=PROMPTS, decoding="disco")
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "disco", "against"]
    missing = _generate(api, auth, model_id, prompts=PROMPTS, decoding="disco",
                        disco={"against": "mdl_nope"})  # fmt: skip
    assert missing.status_code == 404


def test_disco_with_alpha_zero_is_greedy(api, auth, model_id):
    greedy = _generate(api, auth, model_id, prompts=PROMPTS, max_new_tokens=5).json()
    disco = _generate(api, auth, model_id, prompts=PROMPTS, max_new_tokens=5, decoding="disco",
                      disco={"against": model_id, "alpha": 0.0, "beta": 1e-9}).json()  # fmt: skip
    assert disco["completions"] == greedy["completions"] and disco["against"] == model_id


def test_bad_requests_name_the_field(api, auth, model_id):
    response = _generate(api, auth, model_id, prompts=[])
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:2] == ["body", "prompts"]
    assert _generate(api, auth, "mdl_nope", prompts=PROMPTS).status_code == 404


def test_a_model_too_large_is_refused(api, auth, model_id, monkeypatch):
    from api.config import get_settings

    monkeypatch.setenv("DISTILL_GENERATE_MAX_PARAMETERS", "10")
    get_settings.cache_clear()
    response = _generate(api, auth, model_id, prompts=PROMPTS)
    assert response.status_code == 409
    assert "DISTILL_GENERATE_MAX_PARAMETERS" in response.json()["detail"]


def test_top_p_keeps_the_smallest_set_reaching_p():
    from ml.evaluation.decoding import top_p_filter

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.5 + 0.3
    kept = torch.isfinite(top_p_filter(probs.log(), 0.1))
    assert kept.tolist() == [[True, False, False, False]]
