"""The openai backend over real HTTP on loopback, against a server speaking each flavor's wire shape."""

from __future__ import annotations

import asyncio
import random
import socket

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memdistill.core.errors import UserError
from memdistill.generate.teachers.base import Completion, Failure, SamplingParams, TeacherRequest
from memdistill.generate.teachers.openai_compat import (
    MAX_BACKOFF,
    OpenAITeacher,
    TransientError,
    backoff_delay,
    decode_tokasaurus,
    parse_retry_after,
    public_url,
)
from tests.fake_teacher_server import EOS_ID, FakeTeacherServer, expected_response

MAX_TOKENS = 8
TOP_K = 5


def requests_for(count: int, tag: str = "q") -> list[TeacherRequest]:
    return [
        TeacherRequest(i, [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{tag} {i}"}])
        for i in range(count)
    ]


def teacher_for(urls: list[str], flavor: str, **kwargs) -> OpenAITeacher:
    options = {"concurrency": 4, "timeout": 5.0, "max_retries": 3, "retry_backoff": 0.01, "rng_seed": 0}
    options.update(kwargs)
    sampling = options.pop("sampling", SamplingParams(max_tokens=MAX_TOKENS, top_logprobs=TOP_K))
    return OpenAITeacher("fake-model", urls, flavor, sampling, **options)


def collect(teacher: OpenAITeacher, requests: list[TeacherRequest]) -> list[Completion | Failure]:
    async def run() -> list[Completion | Failure]:
        try:
            return [result async for result in teacher.stream(requests)]
        finally:
            await teacher.aclose()

    return asyncio.run(run())


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("flavor", ["tokasaurus", "vllm", "openai"])
def test_recovers_exactly_what_the_server_sent(flavor: str) -> None:
    requests = requests_for(12)
    with FakeTeacherServer(flavor=flavor) as server:
        results = collect(teacher_for([server.url], flavor), requests)
        bodies = list(server.bodies)
    assert sorted(r.sample_idx for r in results) == list(range(12))
    for completion in results:
        assert isinstance(completion, Completion)
        expected = expected_response(requests[completion.sample_idx].messages, MAX_TOKENS, TOP_K, flavor=flavor)
        assert completion.text == expected.text
        assert completion.finish_reason == expected.finish_reason
        assert completion.output_tokens == len(expected.ids)
        assert [t["logprob"] for t in completion.logprobs] == expected.chosen
        assert [[e["logprob"] for e in t["top_logprobs"]] for t in completion.logprobs] == expected.top_logprobs
        if flavor == "openai":
            assert completion.token_ids is None
            assert all(t["token_id"] is None for t in completion.logprobs)
            # Plain strings plus bytes: convert recovers ids from these.
            assert [bytes(t["bytes"]).decode() for t in completion.logprobs] == [t["token"] for t in completion.logprobs]
        else:
            assert completion.token_ids == expected.ids
            assert [t["token_id"] for t in completion.logprobs] == expected.ids
            assert [[e["token_id"] for e in t["top_logprobs"]] for t in completion.logprobs] == expected.top_ids
        if flavor == "tokasaurus" and expected.finish_reason == "stop":
            assert completion.token_ids[-1] == EOS_ID  # the EOS stays, with the distribution it was drawn from
    body = bodies[0]
    assert body["logprobs"] is True and body["top_logprobs"] == TOP_K
    assert body["max_tokens"] == MAX_TOKENS and body["seed"] == 0 and body["temperature"] == 0.0
    assert body.get("logprobs_in_fingerprint") is (True if flavor == "tokasaurus" else None)
    assert body.get("return_tokens_as_token_ids") is (True if flavor == "vllm" else None)


def test_tokasaurus_with_ties_of_both_finish_reasons() -> None:
    # Enough prompts that 'stop' (EOS kept), 'length', and 'length' ending on EOS (Tokasaurus' report when the
    # EOS is the max_tokens-th token) all occur.
    requests = requests_for(30, "mix")
    with FakeTeacherServer(flavor="tokasaurus") as server:
        results = collect(teacher_for([server.url], "tokasaurus"), requests)
    reasons = {r.finish_reason for r in results}
    assert reasons == {"stop", "length"}
    for r in results:
        if r.finish_reason == "stop":
            assert r.token_ids[-1] == EOS_ID
        assert len(r.logprobs) == len(r.token_ids)
    assert any(r.finish_reason == "length" and r.token_ids[-1] == EOS_ID and len(r.token_ids) == MAX_TOKENS for r in results)


def test_no_logprobs_requested_when_top_logprobs_is_zero() -> None:
    sampling = SamplingParams(max_tokens=MAX_TOKENS, top_logprobs=0)
    with FakeTeacherServer(flavor="vllm") as server:
        results = collect(teacher_for([server.url], "vllm", sampling=sampling), requests_for(2))
        body = server.bodies[0]
    assert "logprobs" not in body and "return_tokens_as_token_ids" not in body
    assert all(r.logprobs is None and r.token_ids is None for r in results)


@pytest.mark.parametrize(
    ("flavor", "hint"),
    [("tokasaurus", "logprobs_in_fingerprint"), ("vllm", "--max-logprobs"), ("openai", "logprobs")],
)
def test_server_without_logprobs_is_a_clear_error(flavor: str, hint: str) -> None:
    with FakeTeacherServer(flavor=flavor, logprobs_enabled=False) as server:
        with pytest.raises(UserError, match=f"flavor {flavor}") as caught:
            collect(teacher_for([server.url], flavor), requests_for(3))
    assert hint in str(caught.value)


def test_vllm_flavor_against_a_server_ignoring_token_ids() -> None:
    with FakeTeacherServer(flavor="openai") as server:
        with pytest.raises(UserError, match="return_tokens_as_token_ids"):
            collect(teacher_for([server.url], "vllm"), requests_for(2))


FAULTS = ["500", "503", "429", "timeout", "reset", "truncated", "short"]


def test_faults_still_yield_every_sample_exactly_once() -> None:
    requests = requests_for(28, "fault")
    kinds = {f"fault {i}": FAULTS[i % len(FAULTS)] for i in range(0, 28, 2)}  # half the samples fail first

    def plan(key: str, attempt: int) -> str | None:
        return kinds.get(key) if attempt == 1 else None

    with FakeTeacherServer(flavor="vllm", faults=plan, hang=2.0) as server:
        results = collect(teacher_for([server.url], "vllm", timeout=0.5), requests)
        received, served = dict(server.received), dict(server.served)
    assert sorted(r.sample_idx for r in results) == list(range(28))
    assert all(isinstance(r, Completion) for r in results)
    for r in results:
        expected = expected_response(requests[r.sample_idx].messages, MAX_TOKENS, TOP_K)
        assert r.token_ids == expected.ids
        assert r.extra["attempts"] == (2 if f"fault {r.sample_idx}" in kinds else 1)
    assert all(count == 1 for count in served.values()) and len(served) == 28
    assert sum(received.values()) == 28 + len(kinds)


def test_retry_after_is_honoured() -> None:
    def plan(key: str, attempt: int) -> str | None:
        return "429" if attempt == 1 else None

    with FakeTeacherServer(flavor="openai", faults=plan, retry_after="1") as server:
        results = collect(teacher_for([server.url], "openai"), requests_for(1))
        first, second = server.times["q 0"]
    assert isinstance(results[0], Completion)
    assert second - first >= 0.95


def test_client_errors_are_not_retried() -> None:
    with FakeTeacherServer(flavor="openai", faults=lambda key, attempt: "400" if key == "q 1" else None) as server:
        results = {r.sample_idx: r for r in collect(teacher_for([server.url], "openai"), requests_for(3))}
        assert server.received["q 1"] == 1
    assert isinstance(results[1], Failure) and "HTTP 400: injected 400" in results[1].error and results[1].attempts == 1
    assert results[1].permanent
    assert isinstance(results[0], Completion) and isinstance(results[2], Completion)


def test_gives_up_after_max_retries() -> None:
    with FakeTeacherServer(flavor="openai", faults=lambda key, attempt: "503" if key == "q 0" else None) as server:
        results = {r.sample_idx: r for r in collect(teacher_for([server.url], "openai", max_retries=2), requests_for(2))}
        assert server.received["q 0"] == 3
    assert isinstance(results[0], Failure) and results[0].attempts == 3 and "503" in results[0].error
    assert isinstance(results[1], Completion)


def test_rejected_api_key_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMDISTILL_TEST_KEY", "sk-secret-value-123")
    with FakeTeacherServer(flavor="openai", faults=lambda key, attempt: "401") as server:
        with pytest.raises(UserError, match=r"\$MEMDISTILL_TEST_KEY") as caught:
            collect(teacher_for([server.url], "openai", api_key_env="MEMDISTILL_TEST_KEY"), requests_for(2))
        assert server.auth_headers == {"Bearer sk-secret-value-123"}
    assert "sk-secret" not in str(caught.value)


def test_spreads_over_servers_and_routes_around_a_dead_one() -> None:
    requests = requests_for(40, "spread")
    with FakeTeacherServer(flavor="vllm", delay=0.01) as a, FakeTeacherServer(flavor="vllm", delay=0.01) as b:
        dead = closed_port_url()
        teacher = teacher_for([a.url, dead, b.url], "vllm", concurrency=6, retry_backoff=0.2)
        results = collect(teacher, requests)
        served_a, served_b = sum(a.served.values()), sum(b.served.values())
    assert sorted(r.sample_idx for r in results) == list(range(40))
    assert all(isinstance(r, Completion) for r in results)
    assert served_a + served_b == 40 and served_a >= 10 and served_b >= 10
    assert {r.extra["base_url"] for r in results} == {a.url, b.url}
    # A dead server costs a retry only until it is out of rotation, not one per request.
    assert sum(r.extra["attempts"] - 1 for r in results) < 10


def test_keeps_concurrency_requests_in_flight() -> None:
    with FakeTeacherServer(flavor="openai", delay=0.2) as server:
        collect(teacher_for([server.url], "openai", concurrency=5), requests_for(20))
        assert server.max_in_flight == 5


def test_describe_holds_no_credentials() -> None:
    teacher = teacher_for(["http://user:pass@example.com:8000/v1?api_key=abc"], "openai")
    assert teacher.describe()["base_url"] == "http://example.com:8000/v1"
    assert "pass" not in repr(teacher.describe()) and "abc" not in repr(teacher.describe())
    assert public_url("https://k:s@h/v1#x") == "https://h/v1"


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="flavor"):
        teacher_for(["http://h/v1"], "sglang")
    with pytest.raises(UserError, match="base_url"):
        teacher_for(["localhost:8000"], "openai")


@given(attempt=st.integers(0, 40), base=st.floats(0.0, 5.0), retry_after=st.none() | st.floats(0.0, 1000.0))
def test_backoff_is_bounded_grows_and_respects_retry_after(attempt: int, base: float, retry_after: float | None) -> None:
    delay = backoff_delay(attempt, base, retry_after, random.Random(attempt))
    ceiling = min(MAX_BACKOFF, base * 2**attempt)
    assert ceiling / 2 <= delay or (retry_after is not None and delay >= min(retry_after, 120.0))
    assert delay <= max(ceiling, min(retry_after or 0.0, 120.0)) + 1e-9
    if retry_after is not None:
        assert delay >= min(retry_after, 120.0)


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert parse_retry_after({}) is None


def test_tokasaurus_fingerprint_that_is_not_packed_is_a_setup_error() -> None:
    for fingerprint in (None, "fp_44709d6fcb", '{"other": 1}'):
        with pytest.raises(UserError, match="logprobs_in_fingerprint"):
            decode_tokasaurus(fingerprint, 0, 5)
    with pytest.raises(TransientError, match="cut short"):
        decode_tokasaurus('{"completion_ids": [[1, 2', 0, 5)


def test_tokasaurus_flavor_against_a_server_without_packing() -> None:
    with FakeTeacherServer(flavor="openai") as server:
        with pytest.raises(UserError, match="flavor tokasaurus"):
            collect(teacher_for([server.url], "tokasaurus"), requests_for(2))


# ------------------------------------------------------------------- issue 12: real servers' behaviour


def test_sampling_vllm_asks_for_k_plus_one_and_keeps_top_k_plus_the_sampled_token() -> None:
    """vLLM at T > 0 puts the sampled token first and cuts the list: asked for K it can hold K-1 others."""
    sampling = SamplingParams(max_tokens=MAX_TOKENS, top_logprobs=TOP_K, temperature=0.7, logprobs="raw")
    requests = requests_for(6, "hot")
    with FakeTeacherServer(flavor="vllm") as server:
        results = collect(teacher_for([server.url], "vllm", sampling=sampling), requests)
        body = server.bodies[0]
    assert body["top_logprobs"] == TOP_K + 1 and body["temperature"] == 0.7
    outside = 0
    for r in results:
        expected = expected_response(requests[r.sample_idx].messages, MAX_TOKENS, TOP_K + 1, 0.7, "raw", "vllm")
        assert r.token_ids == expected.ids
        for t, token in enumerate(r.logprobs):
            assert "bytes" not in token and all("bytes" not in alt for alt in token["top_logprobs"])  # those of "token_id:N"
            ids = [alt["token_id"] for alt in token["top_logprobs"]]
            assert ids[:TOP_K] == expected.top_ids[t][:TOP_K]
            values = [alt["logprob"] for alt in token["top_logprobs"]]
            assert values == sorted(values, reverse=True)
            if token["token_id"] not in expected.top_ids[t][:TOP_K]:
                outside += 1
                assert ids[TOP_K:] == [token["token_id"]] and values[TOP_K] == token["logprob"]
            else:
                assert len(ids) == TOP_K
    assert outside > 0


def test_sampling_records_what_the_server_sends_raw_or_tempered() -> None:
    """Tokasaurus sends tempered values (log softmax(logits/T)); the chosen token may lie outside the top K."""
    sampling = SamplingParams(max_tokens=MAX_TOKENS, top_logprobs=TOP_K, temperature=0.5)
    requests = requests_for(4, "temp")
    with FakeTeacherServer(flavor="tokasaurus") as server:
        results = collect(teacher_for([server.url], "tokasaurus", sampling=sampling), requests)
    for r in results:
        tempered = expected_response(requests[r.sample_idx].messages, MAX_TOKENS, TOP_K, 0.5, "tempered", "tokasaurus")
        raw = expected_response(requests[r.sample_idx].messages, MAX_TOKENS, TOP_K, 0.5, "raw", "tokasaurus")
        got = [[alt["logprob"] for alt in token["top_logprobs"]] for token in r.logprobs]
        assert np.allclose(got, tempered.top_logprobs, atol=1e-6) and not np.allclose(got, raw.top_logprobs, atol=1e-3)
        outside = [t for t, token in enumerate(r.logprobs) if token["token_id"] not in [a["token_id"] for a in token["top_logprobs"]]]
        assert outside and all(r.logprobs[t]["logprob"] < r.logprobs[t]["top_logprobs"][-1]["logprob"] for t in outside)
    teacher = teacher_for(["http://h/v1"], "tokasaurus", sampling=sampling)
    assert teacher.describe()["logprobs"] == "tempered"
    with pytest.raises(UserError, match="Tokasaurus sends tempered logprobs only"):
        teacher_for(["http://h/v1"], "tokasaurus", sampling=SamplingParams(temperature=0.5, logprobs="raw"))


def test_tokasaurus_keeps_exact_ids_at_top_logprobs_zero() -> None:
    sampling = SamplingParams(max_tokens=MAX_TOKENS, top_logprobs=0)
    requests = requests_for(3, "ids")
    with FakeTeacherServer(flavor="tokasaurus") as server:
        results = collect(teacher_for([server.url], "tokasaurus", sampling=sampling), requests)
        body = server.bodies[0]
    assert body["logprobs_in_fingerprint"] is True and "top_logprobs" not in body
    for r in results:
        expected = expected_response(requests[r.sample_idx].messages, MAX_TOKENS, 0)
        assert r.token_ids == expected.ids
        assert [t["logprob"] for t in r.logprobs] == expected.chosen and all(t["top_logprobs"] == [] for t in r.logprobs)


def test_a_refused_configuration_stops_the_run_with_the_servers_reason() -> None:
    """A 4xx for every first request (top_logprobs above the limit, an unknown field) stops after a few."""
    reason = "top_logprobs must be less than or equal to 5"
    with FakeTeacherServer(flavor="tokasaurus", refuse=reason) as server:
        with pytest.raises(UserError, match=rf"refused the first 3 requests .*HTTP 400: {reason}"):
            collect(teacher_for([server.url], "tokasaurus", concurrency=1), requests_for(40, "cfg"))
        assert sum(server.received.values()) == 3


def test_llama_cpp_half_characters_arrive_as_empty_strings_without_bytes() -> None:
    requests = requests_for(3, "half")
    with FakeTeacherServer(flavor="openai", llamacpp=True, halves=True) as server:
        results = collect(teacher_for([server.url], "openai"), requests)
    for r in results:
        assert r.text.startswith("é")
        assert [t["token"] for t in r.logprobs[:2]] == ["", ""] and all("bytes" not in t for t in r.logprobs)
        assert r.token_ids is None


@given(values=st.lists(st.floats(-30.0, 0.0), min_size=1, max_size=12, unique=True), k=st.integers(1, 6), chosen=st.integers(0, 11))
def test_keep_top_k_keeps_the_k_best_and_the_sampled_token(values: list[float], k: int, chosen: int) -> None:
    from memdistill.generate.teachers.openai_compat import keep_top_k

    entries = [{"token_id": i, "logprob": v} for i, v in enumerate(values)]
    kept = keep_top_k(entries, chosen, k)
    best = sorted(range(len(values)), key=lambda i: -values[i])[:k]
    ids = [e["token_id"] for e in kept]
    assert ids[:k] == best
    if chosen < len(values) and chosen not in best:
        assert ids[k:] == [chosen]
    else:
        assert len(ids) == len(best)
