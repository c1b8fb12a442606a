"""A loopback chat-completions server that speaks each teacher flavor's wire shape, for tests and benchmarks;
the vllm flavor also answers /v1/completions with prompt scoring (`prompt_logprobs`), as the gain stage uses it.

Plain asyncio streams rather than a web framework, so faults can be injected at the byte level (a reset
connection, a truncated body, a body shorter than its Content-Length). Responses are a deterministic
function of the request (`expected_response`), so tests can check that what the client recovered is
exactly what was sent. Every value is float32-exact, so Tokasaurus' float32 packing round-trips exactly.

Run standalone (the benchmark does): `python tests/fake_teacher_server.py --flavor vllm --port 0`
prints `PORT <n>` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EOS_ID = 2
VOCAB_SIZE = 49152
MAX_TOP_K = 20

# (prompt key, attempt number starting at 1) -> fault name or None. Names: "500", "503", "429", "400",
# "401", "timeout" (answer only after `hang` seconds), "reset" (drop the connection), "truncated" (200 with half a
# JSON body), "short" (Content-Length larger than the body, then close).
FaultPlan = Callable[[str, int], str | None]


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """What identifies a prompt on the server: its last message (tests make them unique)."""
    return str(messages[-1]["content"])


# Two ids whose tokens are the two halves of "é" (bytes C3, A9), as byte-level vocabularies have them.
HALF_IDS = (4, 5)
HALVES = {4: b"\xc3", 5: b"\xa9"}


def token_bytes(token_id: int) -> bytes:
    if token_id in HALVES:
        return HALVES[token_id]
    # Every third token is non-ASCII so the `bytes` field carries something a string round-trip could break.
    return (f"é{token_id}" if token_id % 3 == 0 else f" w{token_id}").encode()


def token_text(token_id: int) -> str:
    """The token as a plain OpenAI server writes it: its text, U+FFFD for half a character."""
    return token_bytes(token_id).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ExpectedResponse:
    ids: list[int]  # generated ids, EOS included when the teacher stopped on it
    chosen: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]
    finish_reason: str

    @property
    def text(self) -> str:
        return b"".join(token_bytes(t) for t in self.ids if t != EOS_ID).decode("utf-8", errors="replace")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def expected_response(
    messages: list[dict[str, Any]],
    max_tokens: int,
    top_k: int,
    temperature: float = 0.0,
    logprobs: str = "tempered",
    flavor: str = "openai",
    halves: bool = False,
) -> ExpectedResponse:
    """What the fake teacher generates. At temperature 0: greedy, the chosen token is the top-1 entry of
    its row. At T > 0, like a real server: values are log softmax(logits/T) (tempered) or log softmax(logits)
    (raw), and every third token is sampled from outside the top K. Tokasaurus reports "length" when the
    EOS is the max_tokens-th token. `halves`: the first two tokens are the halves of "é"."""
    seed = int.from_bytes(hashlib.sha256(prompt_key(messages).encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    natural = 3 + seed % 10
    steps = min(max_tokens, natural)
    ids = rng.integers(6, VOCAB_SIZE, size=steps).tolist()
    finish = "length"
    if natural <= max_tokens:
        ids[-1] = EOS_ID
        finish = "length" if flavor == "tokasaurus" and natural == max_tokens else "stop"
    if halves and steps >= 3:
        ids[0], ids[1] = HALF_IDS
    k = max(1, top_k)
    if temperature <= 0:
        # Sorted descending, float32-exact; the chosen token is the most likely one (greedy).
        values = -np.sort(rng.uniform(0.0, 8.0, size=(steps, k)).astype(np.float32), axis=1)
        top_ids = []
        for t, chosen_id in enumerate(ids):
            others = [int(x) for x in rng.choice(VOCAB_SIZE - 6, size=k + 1, replace=False) + 6 if x != chosen_id][: k - 1]
            top_ids.append([chosen_id, *others])
        top_values = values.astype(np.float64).tolist()
        return ExpectedResponse(ids, [row[0] for row in top_values], top_ids, top_values, finish)
    # A support of 2K candidates per step with logits; the vocabulary's other ids are far below them.
    support = 2 * k + 2
    logits = np.sort(rng.normal(0.0, 2.0, size=(steps, support)), axis=1)[:, ::-1]
    scale = temperature if logprobs == "tempered" else 1.0
    values = _log_softmax(logits / scale).astype(np.float32).astype(np.float64)
    chosen, top_ids, top_values = [], [], []
    for t, chosen_id in enumerate(ids):
        candidates = [int(x) for x in rng.choice(VOCAB_SIZE - 6, size=support + 1, replace=False) + 6 if x != chosen_id][:support]
        # Every third step the sampled token is the (K+2)-th candidate: outside the top K.
        place = k + 1 if t % 3 == 1 else 0
        candidates[place] = chosen_id
        chosen.append(float(values[t, place]))
        top_ids.append(candidates[:k])
        top_values.append(values[t, :k].tolist())
    return ExpectedResponse(ids, chosen, top_ids, top_values, finish)


def _token_entry(token_id: int, logprob: float, exact_ids: bool, llamacpp: bool = False) -> dict[str, Any]:
    if exact_ids:
        # vLLM's return_tokens_as_token_ids: `bytes` are those of the literal "token_id:N" string.
        token = f"token_id:{token_id}"
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    if llamacpp:
        # llama.cpp: no bytes, and an empty string for a token that is half a character.
        return {"token": "" if token_id in HALVES else token_text(token_id), "logprob": logprob}
    return {"token": token_text(token_id), "logprob": logprob, "bytes": list(token_bytes(token_id))}


def response_body(
    flavor: str, request: dict[str, Any], logprobs_enabled: bool = True, llamacpp: bool = False, halves: bool = False,
    vllm_logprobs_mode: str = "raw_logprobs",
) -> dict[str, Any]:
    """The JSON body a real server of `flavor` sends for `request`."""
    top_k = int(request.get("top_logprobs") or 0)
    temperature = float(request.get("temperature") or 0.0)
    # vLLM's default --logprobs-mode is raw_logprobs; Tokasaurus and llama.cpp send tempered values.
    mode = ("raw" if vllm_logprobs_mode.startswith("raw") else "tempered") if flavor == "vllm" else "tempered"
    expected = expected_response(request["messages"], int(request.get("max_tokens") or 16), top_k, temperature, mode, flavor, halves)
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": expected.text},
        "finish_reason": expected.finish_reason,
        "logprobs": None,
    }
    # Real servers send a fingerprint string (vLLM/OpenAI "fp_..."), or null; Tokasaurus packs its arrays in it.
    fingerprint: str | None = None if flavor == "vllm" else "fp_fake"
    wants_logprobs = bool(request.get("logprobs")) and logprobs_enabled
    if flavor == "tokasaurus" and request.get("logprobs_in_fingerprint") and logprobs_enabled:
        pack = lambda array, dtype: base64.b64encode(np.asarray(array, dtype=dtype).tobytes()).decode()  # noqa: E731
        packed: dict[str, Any] = {"completion_ids": [expected.ids], "packed_chosen_logprobs": [pack(expected.chosen, np.float32)]}
        if wants_logprobs:
            packed["packed_topk_indices"] = [pack(expected.top_ids, np.int32)]
            packed["packed_topk_logprobs"] = [pack(expected.top_logprobs, np.float32)]
        fingerprint = json.dumps(packed)
    elif wants_logprobs:
        exact = flavor == "vllm" and bool(request.get("return_tokens_as_token_ids"))
        content = []
        for t, token_id in enumerate(expected.ids):
            entry = _token_entry(token_id, expected.chosen[t], exact, llamacpp)
            pairs = list(zip(expected.top_ids[t], expected.top_logprobs[t]))
            if flavor == "vllm" and temperature > 0:
                # vLLM puts the sampled token first and cuts the list to the count asked for.
                pairs = [(token_id, expected.chosen[t])] + [p for p in pairs if p[0] != token_id]
                pairs = pairs[:top_k]
            entry["top_logprobs"] = [_token_entry(tid, value, exact, llamacpp) for tid, value in pairs]
            content.append(entry)
        choice["logprobs"] = {"content": content}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", "fake"),
        "system_fingerprint": fingerprint,
        "choices": [choice],
        "usage": {
            "prompt_tokens": sum(len(str(m["content"]).split()) for m in request["messages"]),
            "completion_tokens": len(expected.ids),
            "total_tokens": 0,
        },
    }


def expected_prompt_logprobs(prompt_ids: list[int], k: int) -> list[dict[int, tuple[float, int]] | None]:
    """What the fake vLLM server scores for a token-id prompt: per position j >= 1, {id: (logprob, rank)} with
    the K best ids (ranks 1..K) and the prompt's own token j; None at position 0, as vLLM sends it. Every third
    position has its own token among the K best; the others rank it far below them (rank K + 1 + j)."""
    out: list[dict[int, tuple[float, int]] | None] = [None]
    for j in range(1, len(prompt_ids)):
        digest = hashlib.sha256(np.asarray(prompt_ids[: j + 1], dtype=np.int64).tobytes()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        own = prompt_ids[j]
        values = -np.sort(rng.uniform(0.0, 8.0, size=k + 1).astype(np.float32)).astype(np.float64)
        others = [int(x) for x in rng.choice(VOCAB_SIZE - 6, size=k + 1, replace=False) + 6 if x != own][:k]
        entries = {tid: (float(values[r]), r + 1) for r, tid in enumerate(others)}
        if j % 3 == 0:
            # The prompt's own token is among the K best: it takes the place of the K-th.
            del entries[others[-1]]
            entries[own] = (float(values[k - 1]), k)
        else:
            entries[own] = (float(values[k]) - 1.0, k + 1 + j)
        out.append(entries)
    return out


def completion_body(request: dict[str, Any]) -> dict[str, Any]:
    """The JSON body vLLM's /v1/completions sends for a token-id `prompt` with `prompt_logprobs`, `max_tokens: 1`
    (vllm/entrypoints/openai/completion/protocol.py: CompletionResponseChoice.prompt_logprobs, a list of
    None | {token_id: Logprob(logprob, rank, decoded_token)}, ids as JSON object keys)."""
    prompt = request["prompt"]
    if not (isinstance(prompt, list) and all(isinstance(i, int) for i in prompt)):
        raise ValueError("the fake vLLM completions endpoint takes token-id prompts only")
    k = request.get("prompt_logprobs")
    scored = None
    if k is not None:
        scored = [
            None if position is None else {
                str(tid): {"logprob": value, "rank": rank, "decoded_token": token_text(tid)} for tid, (value, rank) in position.items()
            }
            for position in expected_prompt_logprobs(prompt, int(k))
        ]
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": request.get("model", "fake"),
        "choices": [{"index": 0, "text": token_text(7), "logprobs": None, "finish_reason": "length", "stop_reason": None,
                     "token_ids": None, "prompt_logprobs": scored, "prompt_token_ids": None}],
        "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1},
    }


@dataclass
class FakeTeacherServer:
    flavor: str = "openai"
    faults: FaultPlan | None = None
    delay: float = 0.0  # seconds before each answer, to keep requests in flight
    hang: float = 5.0  # how long a "timeout" fault waits before answering
    retry_after: str = "0"
    logprobs_enabled: bool = True
    llamacpp: bool = False  # openai flavor as llama.cpp sends it: no bytes, "" for half characters
    halves: bool = False  # every completion starts with the two halves of "é"
    vllm_logprobs_mode: str = "raw_logprobs"  # the vLLM server's --logprobs-mode
    refuse: str | None = None  # answer every request 400 with this `detail` (a configuration error)
    max_logprobs: int | None = None  # vLLM's --max-logprobs: a larger prompt_logprobs is refused (400)
    host: str = "127.0.0.1"
    port: int = 0
    received: collections.Counter = field(default_factory=collections.Counter)  # every request, per prompt key
    served: collections.Counter = field(default_factory=collections.Counter)  # 200 OK with a full body
    times: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: set[str] = field(default_factory=set)
    keep_bodies: bool = True
    in_flight: int = 0
    max_in_flight: int = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "FakeTeacherServer":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            # Handlers still waiting (hung requests, idle keep-alive connections) end here, not at garbage collection.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "FakeTeacherServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def reset_counts(self) -> None:
        self.received.clear()
        self.served.clear()
        self.times.clear()
        self.bodies.clear()
        self.max_in_flight = 0

    # -- HTTP ------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.keep_bodies:
                    self.auth_headers.add(headers.get("authorization", ""))
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    keep_open = await self._respond(method, path, body, writer)
                finally:
                    self.in_flight -= 1
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: bytes, extra: dict[str, str] | None = None,
                    declared_length: int | None = None) -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
                  503: "Service Unavailable"}[status]
        headers = {"content-type": "application/json", "content-length": str(declared_length or len(payload)), **(extra or {})}
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1") + payload)
        await writer.drain()

    async def _respond(self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False closes the connection."""
        chat = path.endswith("/chat/completions")
        # Plain completions: the vLLM flavor's prompt scoring (the gain stage), as vLLM answers it.
        scoring = path.endswith("/completions") and not chat and self.flavor == "vllm"
        if method != "POST" or not (chat or scoring):
            await self._send(writer, 404, b'{"error": {"message": "not found"}}')
            return True
        request = json.loads(raw)
        if self.keep_bodies:
            self.bodies.append(request)
        key = prompt_key(request["messages"]) if chat else json.dumps(request["prompt"])
        self.received[key] += 1
        self.times[key].append(time.monotonic())
        fault = self.faults(key, self.received[key]) if self.faults else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if fault == "reset":
            writer.transport.abort()
            return False
        if fault == "timeout":
            await asyncio.sleep(self.hang)
        if fault in {"500", "503", "400", "401"}:
            await self._send(writer, int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode())
            return True
        if fault == "429":
            await self._send(writer, 429, b'{"error": {"message": "slow down"}}', {"retry-after": self.retry_after})
            return True
        if self.refuse is not None:
            await self._send(writer, 400, json.dumps({"detail": self.refuse}).encode())
            return True
        if not chat and self.max_logprobs is not None and (request.get("prompt_logprobs") or 0) > self.max_logprobs:
            # vLLM's refusal of a count above its --max-logprobs (a 400, the same every time).
            message = f"Requested prompt logprobs of {request['prompt_logprobs']}, which is greater than max allowed: {self.max_logprobs}"
            await self._send(writer, 400, json.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400}}).encode())
            return True
        body = (
            response_body(self.flavor, request, self.logprobs_enabled, self.llamacpp, self.halves, self.vllm_logprobs_mode)
            if chat
            else completion_body(request)
        )
        payload = json.dumps(body).encode()
        if fault == "truncated":
            await self._send(writer, 200, payload[: len(payload) // 2])
            return True
        if fault == "short":
            await self._send(writer, 200, payload[: len(payload) // 2], declared_length=len(payload))
            return False
        await self._send(writer, 200, payload)
        if fault != "timeout":
            self.served[key] += 1
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flavor", default="openai", choices=("tokasaurus", "vllm", "openai"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()

    async def serve() -> None:
        server = FakeTeacherServer(flavor=args.flavor, delay=args.delay, port=args.port, keep_bodies=False)
        listening = await server._listen()
        print(f"PORT {server.port}", flush=True)
        async with listening:
            await listening.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
