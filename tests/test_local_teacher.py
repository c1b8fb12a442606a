"""The embedded teacher's logprobs are the log-softmax of the scores its sampler drew from.

Runs the real model, so it stays tiny: two prompts of different lengths (so left padding is exercised),
four tokens each.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from memdistill.core.errors import UserError  # noqa: E402
from memdistill.generate.teachers.base import SamplingParams, TeacherRequest  # noqa: E402
from memdistill.generate.teachers.local import LocalTeacher  # noqa: E402

REQUESTS = [
    TeacherRequest(0, [{"role": "user", "content": "What is 2 + 2?"}]),
    TeacherRequest(1, [{"role": "system", "content": "You are a math tutor. Answer briefly."},
                       {"role": "user", "content": "A jacket costs 60 euros and is 25% off. What does it cost now?"}]),
]
TOP_K = 5


@pytest.fixture(scope="module")
def greedy_teacher() -> LocalTeacher:
    return LocalTeacher("smollm2-135m-instruct", SamplingParams(max_tokens=4, temperature=0.0, top_logprobs=TOP_K), batch_size=2)


def reference_logprobs(teacher: LocalTeacher, request: TeacherRequest, generated: list[int], temperature: float) -> torch.Tensor:
    """One unpadded forward pass over prompt + generated tokens: log-softmax(logits / T) at each step."""
    prompt = teacher._encode([request])[0]
    ids = torch.tensor([prompt + generated])
    with torch.inference_mode():
        logits = teacher._model(input_ids=ids).logits[0].float()
    steps = logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)]
    return torch.log_softmax(steps / (temperature or 1.0), dim=-1)


def check_against_reference(teacher: LocalTeacher, temperature: float) -> None:
    completions = teacher.generate_batch(REQUESTS)
    for request, completion in zip(REQUESTS, completions):
        assert completion.sample_idx == request.sample_idx and completion.token_ids
        assert completion.output_tokens == len(completion.token_ids) == len(completion.logprobs)
        reference = reference_logprobs(teacher, request, completion.token_ids, temperature)
        for step, (token_id, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
            assert entry["token_id"] == token_id
            assert math.isclose(entry["logprob"], reference[step, token_id].item(), abs_tol=2e-3)
            expected_top = torch.topk(reference[step], TOP_K)
            assert [e["token_id"] for e in entry["top_logprobs"]][:2] == expected_top.indices.tolist()[:2]
            for e in entry["top_logprobs"]:
                assert math.isclose(e["logprob"], reference[step, e["token_id"]].item(), abs_tol=2e-3)
            if temperature == 0:
                assert token_id == int(reference[step].argmax())  # greedy: the chosen token is the top one


def test_greedy_logprobs_match_an_unpadded_forward_pass(greedy_teacher: LocalTeacher) -> None:
    check_against_reference(greedy_teacher, 0.0)


def test_sampled_logprobs_are_those_of_the_tempered_distribution(greedy_teacher: LocalTeacher) -> None:
    hot = LocalTeacher("smollm2-135m-instruct", SamplingParams(max_tokens=4, temperature=0.7, top_logprobs=TOP_K, seed=3), 2)
    hot._tokenizer, hot._model = greedy_teacher._tokenizer, greedy_teacher._model  # share the loaded weights
    check_against_reference(hot, 0.7)


def test_top_p_masked_tokens_are_left_out_not_minus_infinity(greedy_teacher: LocalTeacher) -> None:
    narrow = LocalTeacher("smollm2-135m-instruct", SamplingParams(max_tokens=3, temperature=1.0, top_p=0.05, top_logprobs=20), 2)
    narrow._tokenizer, narrow._model = greedy_teacher._tokenizer, greedy_teacher._model
    for completion in narrow.generate_batch(REQUESTS):
        for entry in completion.logprobs:
            assert 1 <= len(entry["top_logprobs"]) < 20
            assert all(math.isfinite(e["logprob"]) for e in entry["top_logprobs"])


def test_rejects_other_models() -> None:
    with pytest.raises(UserError, match="local backend"):
        LocalTeacher("gpt-4o", SamplingParams())


def test_raw_logprobs_are_those_of_the_model_before_temperature(greedy_teacher: LocalTeacher) -> None:
    """generate.logprobs: raw records log softmax(logits) while sampling at T; tempered divides by T first."""
    raw = LocalTeacher("smollm2-135m-instruct", SamplingParams(max_tokens=4, temperature=0.7, top_logprobs=TOP_K, seed=3, logprobs="raw"), 2)
    raw._tokenizer, raw._model = greedy_teacher._tokenizer, greedy_teacher._model
    assert raw.describe()["logprobs"] == "raw"
    check_against_reference(raw, 1.0)


# Prefix reuse: prompts built from one memory, as the snapshots stage renders them. Two share everything
# but the observation, one is a duplicate, one drops an entry in the middle (exclude_current shape), one
# shares only the system prompt; batch size 2 makes the reuse cross batch boundaries.
MEMORY = "\n".join(f"OBSERVATION: Problem {i}: {i} + {i + 3}?\nACTION: {2 * i + 3}\nFEEDBACK: correct" for i in range(4))
SHARED = [
    TeacherRequest(10, [{"role": "system", "content": "You are a math tutor."},
                        {"role": "user", "content": f"{MEMORY}\nHere is the current observation:\nProblem 7: 3 + 4?"}]),
    TeacherRequest(11, [{"role": "system", "content": "You are a math tutor."}, {"role": "user", "content": "Say hi."}]),
    TeacherRequest(12, [{"role": "system", "content": "You are a math tutor."},
                        {"role": "user", "content": f"{MEMORY}\nHere is the current observation:\nProblem 8: 10 + 10? Explain."}]),
    TeacherRequest(13, [{"role": "system", "content": "You are a math tutor."},
                        {"role": "user", "content": MEMORY.replace("OBSERVATION: Problem 2: 2 + 5?\nACTION: 7\nFEEDBACK: correct\n", "")
                         + "\nHere is the current observation:\nProblem 2: 2 + 5?"}]),
    TeacherRequest(14, [{"role": "system", "content": "You are a math tutor."},
                        {"role": "user", "content": f"{MEMORY}\nHere is the current observation:\nProblem 7: 3 + 4?"}]),
]


def test_prefix_reuse_gives_the_plain_path_s_ids_and_logprobs_in_input_order(greedy_teacher: LocalTeacher, monkeypatch: pytest.MonkeyPatch) -> None:
    from memdistill.generate.teachers.prefix_plan import plan_prefix_reuse, prefill_tokens

    teacher = LocalTeacher("smollm2-135m-instruct", SamplingParams(max_tokens=4, temperature=0.0, top_logprobs=TOP_K), batch_size=2)
    teacher._tokenizer, teacher._model = greedy_teacher._tokenizer, greedy_teacher._model
    plain = [teacher.generate_batch([request])[0] for request in SHARED]
    model, decoder = teacher._model, teacher._model.get_decoder()
    prefilled: list[int] = []  # tokens per forward pass outside model.generate
    decoding = [False]
    plain_forward, plain_generate = decoder.forward, model.generate

    def counting_forward(input_ids=None, **kwargs):  # noqa: ANN001, ANN202
        if not decoding[0]:
            prefilled.append(input_ids.shape[1])
        return plain_forward(input_ids=input_ids, **kwargs)

    def flagged_generate(**kwargs):  # noqa: ANN003, ANN202
        decoding[0] = True
        try:
            return plain_generate(**kwargs)
        finally:
            decoding[0] = False

    monkeypatch.setattr(decoder, "forward", counting_forward)
    monkeypatch.setattr(model, "generate", flagged_generate)
    reused = teacher.generate_reusing_prefixes(SHARED)
    monkeypatch.undo()

    prompts = teacher._encode(SHARED)
    assert plan_prefix_reuse(prompts).reused.count(0) == 1  # all share the system prompt at least
    # the prompt tokens computed before decoding are only those no earlier prompt shared (last tokens: by generate)
    assert sum(prefilled) == prefill_tokens(prompts, plan_prefix_reuse(prompts)) - len(prompts) < sum(map(len, prompts)) // 2
    assert [c.sample_idx for c in reused] == [r.sample_idx for r in SHARED]
    for expected, got in zip(plain, reused):
        assert got.token_ids == expected.token_ids and got.finish_reason == expected.finish_reason
        assert got.input_tokens == expected.input_tokens and got.text == expected.text
        for want, have in zip(expected.logprobs, got.logprobs):
            assert abs(want["logprob"] - have["logprob"]) <= 1e-4
            assert [e["token_id"] for e in want["top_logprobs"]] == [e["token_id"] for e in have["top_logprobs"]]
            assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(want["top_logprobs"], have["top_logprobs"])) <= 1e-4


def test_stream_yields_one_completion_per_request_through_prefix_reuse(greedy_teacher: LocalTeacher) -> None:
    import asyncio

    teacher = LocalTeacher("smollm2-135m-instruct", SamplingParams(max_tokens=2, temperature=0.0, top_logprobs=TOP_K), batch_size=3)
    teacher._tokenizer, teacher._model = greedy_teacher._tokenizer, greedy_teacher._model

    async def collect() -> list:
        return [c async for c in teacher.stream(SHARED)]

    streamed = asyncio.run(collect())
    direct = {c.sample_idx: c.token_ids for c in teacher.generate_reusing_prefixes(SHARED)}
    assert sorted(c.sample_idx for c in streamed) == sorted(direct)
    assert all(c.token_ids == direct[c.sample_idx] for c in streamed)
