"""Data modes (seqkd, onpolicy, opd, skd) and the sampler under them, on tiny CPU models."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ml.data.examples import IGNORE_INDEX, collate, encode_example
from ml.distillation.data_modes import (
    onpolicy_batch,
    opd_loss,
    opd_reverse_kl,
    prompt_ids_from_batch,
    sampled_token_logprobs,
    seqkd_records,
    skd_batch,
    step_generator,
    use_onpolicy,
)
from ml.distillation.sampling import (
    GenerationSettings,
    choose_tokens,
    decode_responses,
    encode_prompt,
    sample_responses,
)
from ml.evaluation.generation import greedy_generate
from ml.loading import load_causal_lm, load_tokenizer

Pairs = tuple[list[tuple[str, str]], list[tuple[str, str]]]
GREEDY = GenerationSettings(max_new_tokens=8, temperature=0.0)
SAMPLED = GenerationSettings(max_new_tokens=8, temperature=1.0)


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path) -> PreTrainedModel:
    return load_causal_lm(tiny_teacher_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(tiny_teacher_dir)


@pytest.fixture(scope="module")
def student(teacher: PreTrainedModel) -> PreTrainedModel:
    """A random 1-layer student on the teacher's vocabulary: it rarely says ``eos``."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=teacher.config.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=teacher.config.pad_token_id,
        bos_token_id=teacher.config.bos_token_id,
        eos_token_id=teacher.config.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.train()  # as in the recipe: sampling must switch to eval and back
    return model


@pytest.fixture(scope="module")
def prompts(instruction_pairs: Pairs) -> list[str]:
    return [prompt for prompt, _ in instruction_pairs[1][:5]]


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    return [encode_prompt(tokenizer, prompt) for prompt in prompts]


# --------------------------------------------------------------------------- settings/sampler
@pytest.mark.parametrize(
    "bad",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": 2.0},
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"top_k": True},
    ],
)
def test_generation_settings_reject_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GenerationSettings(**bad)  # type: ignore[arg-type]


def test_choose_tokens_inverts_the_filtered_distribution() -> None:
    # probs 0.5, 0.3, 0.15, 0.05. top_p = 0.7 keeps {0, 1} (mass before token 2 is 0.8);
    # top_k = 3 keeps {0, 1, 2}. Evenly spaced uniforms give each token n * pi(v) draws (+-1).
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    n = 2000
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    cases = {
        GenerationSettings(top_p=0.7): [0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0],
        GenerationSettings(top_k=3): [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
        GenerationSettings(): [0.5, 0.3, 0.15, 0.05],
        GenerationSettings(temperature=0.5): [25 / 36.5, 9 / 36.5, 2.25 / 36.5, 0.25 / 36.5],
    }
    for settings, expected in cases.items():
        tokens = choose_tokens(logits.expand(n, 4), settings, uniforms)
        counts = torch.bincount(tokens, minlength=4).tolist()
        assert counts == pytest.approx([n * p for p in expected], abs=1.0), settings
    greedy = choose_tokens(logits.expand(3, 4), GREEDY, torch.zeros(3))
    assert greedy.tolist() == [0, 0, 0]


def test_greedy_sampling_matches_hf_greedy_generate(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
) -> None:
    # Left padding, position ids and the KV cache agree with `model.generate` on long outputs.
    for model in (teacher, student):
        ours = sample_responses(model, tokenizer, prompts, GREEDY, batch_size=3)
        reference = greedy_generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=5)
        assert decode_responses(tokenizer, ours) == reference
    assert student.training


def test_sampling_is_seeded_and_batch_invariant(
    student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> None:
    def draw(seed: int, batch_size: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return sample_responses(
            student, tokenizer, prompts, SAMPLED, generator=generator, batch_size=batch_size
        )

    first = draw(3, 5)
    assert draw(3, 5) == first
    assert draw(3, 2) == first
    assert draw(4, 5) != first
    assert all(1 <= len(response) <= SAMPLED.max_new_tokens for response in first)


def test_responses_stop_at_eos_and_keep_it(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> None:
    eos = tokenizer.eos_token_id
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0)
    generator = torch.Generator().manual_seed(0)
    responses = sample_responses(teacher, tokenizer, prompts * 2, settings, generator=generator)
    ended = [r for r in responses if r[-1] == eos]
    assert ended, "the trained teacher should finish some answers"
    for response in responses:
        assert eos not in response[:-1]
        assert response[-1] == eos or len(response) == settings.max_new_tokens
    texts = decode_responses(tokenizer, responses)
    assert all("<eos>" not in text and text == text.strip() for text in texts)


# ------------------------------------------------------------------------------------ seqkd
def test_seqkd_replaces_responses_with_teacher_generations(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instruction_pairs: Pairs,
) -> None:
    records = instruction_pairs[1][:6]
    prompts = [prompt for prompt, _ in records]
    greedy = seqkd_records(teacher, tokenizer, records, GREEDY, batch_size=4)
    assert [p for p, _ in greedy] == prompts
    assert [r for _, r in greedy] == greedy_generate(teacher, tokenizer, prompts, max_new_tokens=8)
    # Sampled: deterministic per seed, whatever the batch size; a new seed changes samples.
    # (The random model stands in as a teacher whose samples certainly vary.)
    sampled = seqkd_records(student, tokenizer, records, SAMPLED, seed=1, batch_size=4)
    assert seqkd_records(student, tokenizer, records, SAMPLED, seed=1, batch_size=6) == sampled
    assert seqkd_records(student, tokenizer, records, SAMPLED, seed=2) != sampled
    assert [r for _, r in sampled] != [r for _, r in records]


# --------------------------------------------------------------------------------- onpolicy
def _check_generated_batch(
    batch: dict[str, torch.Tensor], contexts: list[list[int]], max_length: int, eos: int
) -> None:
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert input_ids.shape == mask.shape == labels.shape
    assert input_ids.shape[0] == len(contexts) and input_ids.shape[1] <= max_length
    assert input_ids.dtype == mask.dtype == labels.dtype == torch.long
    for row, context in enumerate(contexts):
        length = int(mask[row].sum())
        assert mask[row, :length].all() and not mask[row, length:].any()
        n_prompt = len(context)
        assert input_ids[row, :n_prompt].tolist() == context
        assert (labels[row, :n_prompt] == IGNORE_INDEX).all()  # bos + prompt never labelled
        assert (labels[row, length:] == IGNORE_INDEX).all()
        response = labels[row, n_prompt:length]
        assert len(response) >= 1 and response.tolist() == input_ids[row, n_prompt:length].tolist()
        assert eos not in response[:-1].tolist()


def test_onpolicy_batch_labels_only_the_sampled_response(
    student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> None:
    contexts = _prompt_ids(tokenizer, prompts)
    batch = onpolicy_batch(
        student,
        tokenizer,
        contexts,
        SAMPLED,
        generator=step_generator(0, 1, "sample"),
        max_length=64,
    )
    _check_generated_batch(batch, contexts, 64, tokenizer.eos_token_id)
    again = onpolicy_batch(
        student,
        tokenizer,
        [c[1:] for c in contexts],  # bos is prepended when missing
        SAMPLED,
        generator=step_generator(0, 1, "sample"),
        max_length=64,
    )
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    other = onpolicy_batch(
        student,
        tokenizer,
        contexts,
        SAMPLED,
        generator=step_generator(0, 2, "sample"),
        max_length=64,
    )
    assert not torch.equal(batch["input_ids"], other["input_ids"])
    assert student.training


def test_onpolicy_batch_cuts_long_prompts_from_the_left(
    student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> None:
    contexts = _prompt_ids(tokenizer, prompts)
    max_length = 12  # prompts keep max(12 - 8, 12 // 2) = 6 tokens: bos + their last 5
    batch = onpolicy_batch(
        student, tokenizer, contexts, SAMPLED, generator=torch.Generator(), max_length=max_length
    )
    kept = [c[:1] + c[-5:] for c in contexts]
    _check_generated_batch(batch, kept, max_length, tokenizer.eos_token_id)
    assert (batch["attention_mask"].sum(dim=1) <= max_length).all()


def test_prompt_ids_from_batch_recovers_bos_and_prompt(
    tokenizer: PreTrainedTokenizerBase, instruction_pairs: Pairs
) -> None:
    records = instruction_pairs[0][:4]
    batch = collate([encode_example(tokenizer, p, r, 64) for p, r in records], 0)
    assert prompt_ids_from_batch(batch) == _prompt_ids(tokenizer, [p for p, _ in records])


def test_use_onpolicy_is_a_seeded_bernoulli_draw() -> None:
    assert not any(use_onpolicy(0.0, step_generator(0, s, "coin")) for s in range(50))
    assert all(use_onpolicy(1.0, step_generator(0, s, "coin")) for s in range(50))
    draws = [use_onpolicy(0.3, step_generator(5, s, "coin")) for s in range(4000)]
    # Binomial(4000, 0.3): standard deviation 29 draws; 5 sigma.
    assert abs(sum(draws) - 1200) < 5 * math.sqrt(4000 * 0.3 * 0.7)
    assert draws == [use_onpolicy(0.3, step_generator(5, s, "coin")) for s in range(4000)]
    generator = torch.Generator().manual_seed(0)
    use_onpolicy(0.0, generator)  # always consumes one draw, whatever lmbda
    assert generator.get_state().equal(_advanced(torch.Generator().manual_seed(0)).get_state())
    with pytest.raises(ValueError):
        use_onpolicy(1.5, None)


def _advanced(generator: torch.Generator) -> torch.Generator:
    torch.rand((), generator=generator, dtype=torch.float64)
    return generator


def test_step_generator_depends_only_on_its_arguments() -> None:
    def first(seed: int, step: int, stream: str) -> float:
        return float(torch.rand((), generator=step_generator(seed, step, stream)))

    assert first(0, 7, "coin") == first(0, 7, "coin")
    assert len({first(0, 7, "coin"), first(0, 8, "coin"), first(1, 7, "coin")}) == 3
    assert first(0, 7, "coin") != first(0, 7, "sample")


# -------------------------------------------------------------------------------------- opd
def test_sampled_token_logprobs_match_categorical_log_prob() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=generator)
    tokens = torch.randint(0, 7, (2, 3), generator=generator)
    expected = torch.distributions.Categorical(logits=logits).log_prob(tokens)
    torch.testing.assert_close(sampled_token_logprobs(logits, tokens), expected)
    masked = tokens.clone()
    masked[0, 0] = IGNORE_INDEX  # read as token 0, to be masked by the caller
    assert torch.isfinite(sampled_token_logprobs(logits, masked)).all()
    with pytest.raises(ValueError):
        sampled_token_logprobs(logits, tokens[:, :2])


def test_opd_loss_value_by_hand_and_masking() -> None:
    # q(y) = 1/2, p(y) = 1/4: A = -(log 1/2 - log 1/4) = -log 2, loss = -A log q = -(log 2)^2,
    # d loss / d log q = log q - log p = log 2.
    student = torch.tensor([[math.log(0.5), 0.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(0.25), 5.0]])
    mask = torch.tensor([[True, False]])
    loss = opd_loss(student, teacher, mask)
    assert float(loss.detach()) == pytest.approx(-(math.log(2) ** 2))
    loss.backward()
    assert student.grad is not None
    assert student.grad[0].tolist() == pytest.approx([math.log(2), 0.0])
    assert float(opd_reverse_kl(student, teacher, mask)) == pytest.approx(math.log(2))
    with torch.no_grad():
        summed = opd_loss(student, teacher, mask, reduction="sum")
        nothing = opd_loss(student, teacher, torch.zeros_like(mask))
        same = opd_loss(student, student, torch.ones_like(mask))
    assert float(summed) == pytest.approx(float(loss.detach()))
    assert float(nothing) == 0.0 and not torch.isnan(nothing)
    assert float(same) == 0.0
    with pytest.raises(ValueError):
        opd_loss(student, teacher[:, :1], mask)
    with pytest.raises(ValueError):
        opd_loss(student, teacher, mask, reduction="max")


def test_opd_estimate_and_gradient_match_exact_reverse_kl() -> None:
    # Monte Carlo over n on-policy samples y ~ q at one position with a 6-token vocabulary:
    # E[log q(y) - log p(y)] = KL(q || p) and E[grad opd_loss] = grad KL(q || p).
    generator = torch.Generator().manual_seed(0)
    student_logits = torch.randn(6, generator=generator).requires_grad_(True)
    teacher_logits = torch.randn(6, generator=generator) * 2
    log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    exact_kl = (log_q.exp() * (log_q - log_p)).sum()
    (exact_grad,) = torch.autograd.grad(exact_kl, student_logits)

    n = 200_000
    samples = torch.multinomial(log_q.exp().detach(), n, replacement=True, generator=generator)
    tokens = samples.view(1, n)
    mask = torch.ones(1, n, dtype=torch.bool)
    student_lp = sampled_token_logprobs(student_logits.expand(1, n, 6), tokens)
    teacher_lp = sampled_token_logprobs(teacher_logits.expand(1, n, 6), tokens)

    per_token = (student_lp - teacher_lp).detach().view(n)
    tolerance = 5 * float(per_token.std()) / math.sqrt(n)
    estimate = float(opd_reverse_kl(student_lp, teacher_lp, mask))
    assert estimate == pytest.approx(float(exact_kl.detach()), abs=tolerance)

    (grad,) = torch.autograd.grad(opd_loss(student_lp, teacher_lp, mask), student_logits)
    # Per-sample gradients (log q(y) - log p(y)) (onehot(y) - q) give the standard error.
    per_sample = per_token[:, None] * (F.one_hot(samples, 6) - log_q.exp().detach())
    standard_error = per_sample.std(dim=0) / math.sqrt(n)
    assert ((grad - exact_grad).abs() <= 5 * standard_error + 1e-6).all(), (grad, exact_grad)
    # A sampled tokens' gradient is not the same thing as the forward-KL one: a real check.
    log_q = F.log_softmax(student_logits, -1)
    forward_kl = (log_p.exp() * (log_p - log_q)).sum()
    (forward_grad,) = torch.autograd.grad(forward_kl, student_logits)
    assert not ((grad - forward_grad).abs() <= 5 * standard_error + 1e-6).all()


# -------------------------------------------------------------------------------------- skd
def test_skd_with_top_k_vocab_keeps_every_student_token(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
) -> None:
    contexts = _prompt_ids(tokenizer, prompts)
    vocab = teacher.config.vocab_size
    batch, rate = skd_batch(
        student, teacher, tokenizer, contexts, GREEDY, top_k=vocab, generator=None, max_length=64
    )
    assert rate == 1.0
    student_only = onpolicy_batch(
        student, tokenizer, contexts, GREEDY, generator=None, max_length=64
    )
    assert all(torch.equal(batch[k], student_only[k]) for k in batch)
    _, sampled_rate = skd_batch(
        student,
        teacher,
        tokenizer,
        contexts,
        SAMPLED,
        top_k=vocab,
        generator=torch.Generator().manual_seed(0),
        max_length=64,
    )
    assert sampled_rate == 1.0
    assert student.training and not teacher.training


def test_skd_with_top_1_and_greedy_teacher_gives_teacher_argmax(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
) -> None:
    contexts = _prompt_ids(tokenizer, prompts)
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0)

    def run(seed: int) -> tuple[dict[str, torch.Tensor], float]:
        return skd_batch(
            student,
            teacher,
            tokenizer,
            contexts,
            settings,
            top_k=1,
            generator=torch.Generator().manual_seed(seed),
            max_length=64,
            teacher_settings=GREEDY,
        )

    batch, rate = run(0)
    _check_generated_batch(batch, contexts, 64, tokenizer.eos_token_id)
    assert 0.0 <= rate < 1.0  # a random student rarely guesses the teacher's argmax
    with torch.no_grad():
        logits = teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    labels = batch["labels"][:, 1:]
    response = labels != IGNORE_INDEX
    assert torch.equal(logits[:, :-1].argmax(-1)[response], labels[response])
    teacher_greedy = onpolicy_batch(
        teacher, tokenizer, contexts, GREEDY, generator=None, max_length=64
    )
    assert torch.equal(batch["input_ids"], teacher_greedy["input_ids"])
    again, again_rate = run(0)
    assert torch.equal(again["input_ids"], batch["input_ids"]) and again_rate == rate


def test_skd_mixes_student_and_teacher_tokens_deterministically(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
) -> None:
    contexts = _prompt_ids(tokenizer, prompts)

    def run(seed: int) -> tuple[dict[str, torch.Tensor], float]:
        return skd_batch(
            student,
            teacher,
            tokenizer,
            contexts,
            SAMPLED,
            top_k=25,
            generator=torch.Generator().manual_seed(seed),
            max_length=16,
        )

    batch, rate = run(0)
    _check_generated_batch(batch, [c[:1] + c[-7:] for c in contexts], 16, tokenizer.eos_token_id)
    assert 0.0 < rate < 1.0
    again, again_rate = run(0)
    assert all(torch.equal(batch[k], again[k]) for k in batch) and again_rate == rate
    with pytest.raises(ValueError):
        skd_batch(
            student, teacher, tokenizer, contexts, SAMPLED, top_k=0, generator=None, max_length=16
        )


# -------------------------------------------------------------------------------------- cuda
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_modes_on_cuda_sample_what_the_cpu_samples(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
) -> None:
    # Row generators live on the CPU, so the same seed gives the same tokens on any device.
    contexts = _prompt_ids(tokenizer, prompts)
    cuda_student = copy.deepcopy(student).to("cuda")  # type: ignore[arg-type]
    cuda_teacher = copy.deepcopy(teacher).to("cuda")  # type: ignore[arg-type]

    def both(fn: Callable[[PreTrainedModel, PreTrainedModel], object]) -> tuple[object, object]:
        return fn(student, teacher), fn(cuda_student, cuda_teacher)

    cpu, gpu = both(
        lambda s, _: onpolicy_batch(
            s, tokenizer, contexts, SAMPLED, generator=step_generator(0, 1, "x"), max_length=64
        )
    )
    assert isinstance(cpu, dict) and isinstance(gpu, dict)
    assert all(torch.equal(cpu[k], gpu[k]) for k in cpu)
    cpu, gpu = both(
        lambda s, t: skd_batch(
            s,
            t,
            tokenizer,
            contexts,
            SAMPLED,
            top_k=5,
            generator=step_generator(0, 1, "x"),
            max_length=64,
        )
    )
    assert isinstance(cpu, tuple) and isinstance(gpu, tuple)
    assert torch.equal(cpu[0]["input_ids"], gpu[0]["input_ids"]) and cpu[1] == gpu[1]
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        batch, rate = skd_batch(
            cuda_student,
            cuda_teacher,
            tokenizer,
            contexts,
            SAMPLED,
            top_k=5,
            generator=step_generator(0, 1, "x"),
            max_length=64,
        )
        _check_generated_batch(batch, contexts, 64, tokenizer.eos_token_id)
        device_batch = {k: v.cuda() for k, v in batch.items()}
        logits = cuda_student(
            input_ids=device_batch["input_ids"], attention_mask=device_batch["attention_mask"]
        ).logits[:, :-1]
        student_lp = sampled_token_logprobs(logits, device_batch["input_ids"][:, 1:])
        loss = opd_loss(
            student_lp, student_lp.detach() - 1.0, device_batch["labels"][:, 1:] != -100
        )
    loss.backward()
    assert 0.0 <= rate <= 1.0 and torch.isfinite(loss)
