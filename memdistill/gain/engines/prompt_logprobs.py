"""vLLM's prompt scoring as a ScoreResult: shared by the in-process engine and the served one.

With `prompt_logprobs=K` vLLM returns, for every prompt position j >= 1, the K most likely ids under the
model given the tokens before j (ranks 1..K) and the prompt's own token j with its logprob (and its rank,
which may be far beyond K). We send the student prompt followed by the teacher's completion ids, so the
completion's position t is prompt position len(student_prompt) + t and carries the completion's token t.

A teacher top-k id that vLLM did not return at t ranks below the K returned ones, so its log q is at most
the K-th best value returned there: that value is the bound (`lower_bound`), and G_t computed with it is a
lower bound on the true G_t. The prompt's own token does not give the bound: it can rank far below ids
that were not returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memdistill.core.errors import UserError
from memdistill.gain.engines.base import ScoreRequest, ScoreResult, ScoringSettings


def refuse_tempered(settings: ScoringSettings) -> None:
    """vLLM's prompt logprobs are log softmax(logits) whatever its logprobs_mode, so they cannot follow a tempered
    contract at T > 0 (log softmax(logits / T) needs the whole vocabulary's logits)."""
    if settings.logprobs == "tempered" and settings.temperature > 0:
        raise UserError(
            f"gain: the dataset's logprobs are tempered at temperature {settings.temperature:g} (softmax(logits/T)), "
            "but vLLM scores prompts as softmax(logits); regenerate with generate.logprobs: raw (or temperature 0) to "
            "score on vLLM"
        )


class ScoringMismatch(ValueError):
    """What the engine scored is not the prompt we sent (re-tokenised, cut, or another length)."""


def completion_positions(positions: Sequence[Mapping[int, Any] | None], request: ScoreRequest) -> list[Mapping[int, Any]]:
    """The entries of the completion's positions, checked to be those of the ids we sent."""
    prompt_len, completion_len = len(request.prompt_ids), len(request.completion_ids)
    expected = prompt_len + completion_len
    if len(positions) != expected:
        raise ScoringMismatch(
            f"sample {request.key}: the engine scored {len(positions)} prompt positions, expected {expected} "
            f"({prompt_len} student prompt + {completion_len} completion ids)"
        )
    out: list[Mapping[int, Any]] = []
    for t, token_id in enumerate(request.completion_ids):
        entries = positions[prompt_len + t]
        if entries is None or token_id not in entries:
            raise ScoringMismatch(
                f"sample {request.key}: completion position {t} was not scored as id {token_id}; the engine scored "
                "other tokens than the ids sent"
            )
        out.append(entries)
    return out


def score_result(request: ScoreRequest, entries: Sequence[Mapping[int, float]], k: int, full_vocab: bool = False) -> ScoreResult:
    """The ScoreResult of one request from its completion positions' entries {id: log q}.

    `k`: the prompt_logprobs count asked for (the returned top-K per position, plus the scored token);
    `full_vocab`: every id was returned (prompt_logprobs=-1), so nothing is missing and there is no bound.
    """
    steps = len(request.completion_ids)
    counts = np.fromiter((len(e) for e in entries), dtype=np.int64, count=steps)
    total = int(counts.sum())
    pos = np.repeat(np.arange(steps, dtype=np.int64), counts)
    ids = np.fromiter((i for e in entries for i in e), dtype=np.int64, count=total)
    values = np.fromiter((v for e in entries for v in e.values()), dtype=np.float64, count=total)

    # One sorted key per (position, id) answers every lookup with a binary search, no loop over tokens.
    width = int(max(ids.max(initial=0), np.max(request.topk_ids, initial=0), max(request.completion_ids, default=0))) + 1
    keys = pos * width + ids
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_values = keys[order], values[order]

    def lookup(at: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        query = at * width + np.where(wanted >= 0, wanted, 0)
        index = np.minimum(np.searchsorted(sorted_keys, query), max(total - 1, 0))
        found = (wanted >= 0) & (sorted_keys[index] == query) if total else np.zeros(query.shape, dtype=bool)
        return np.where(found, sorted_values[index] if total else np.nan, np.nan)

    topk_ids = np.asarray(request.topk_ids, dtype=np.int64)
    logq_topk = lookup(np.arange(steps, dtype=np.int64)[:, None], topk_ids)
    logq_chosen = lookup(np.arange(steps, dtype=np.int64), np.asarray(request.completion_ids, dtype=np.int64))

    # Per position, best first: the first entry is the engine's argmax, the k-th the bound.
    by_value = np.lexsort((ids, -values, pos))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if steps else np.zeros(0, dtype=np.int64)
    top1_id = np.where(counts > 0, ids[by_value][np.minimum(starts, max(total - 1, 0))] if total else -1, -1)
    if full_vocab:
        lower_bound = np.full(steps, np.nan)
    else:
        kth = starts + np.minimum(counts, k) - 1
        lower_bound = np.where(counts > 0, values[by_value][np.maximum(kth, 0)] if total else np.nan, np.nan)
    return ScoreResult(
        key=request.key,
        logq_topk=logq_topk,
        logq_chosen=logq_chosen,
        top1_id=top1_id.astype(np.int64),
        lower_bound=lower_bound.astype(np.float64),
    )
