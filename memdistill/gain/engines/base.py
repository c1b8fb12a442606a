"""What a gain engine receives and returns (the contract between the gain stage and its scoring engines).

An engine scores the teacher's own completion ids after the student prompt in one prefill (no decoding,
no re-tokenisation) and returns, per completion position t, log q_without_memory for each of the teacher's
top-k ids at t. The math (memdistill/gain/math.py) turns that into the memory gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    key: int
    """The sample's key (sample_idx, as in dataset.jsonl metadata)."""
    prompt_ids: list[int]
    """The student prompt exactly as convert writes it (chat template applied, add_generation_prompt=True)."""
    completion_ids: list[int]
    """The teacher's own completion ids (the parquet's assistant token_ids)."""
    topk_ids: np.ndarray
    """int64 [T, K]: the teacher's top-k ids per completion position, as generated."""


@dataclass(slots=True)
class ScoreResult:
    key: int
    logq_topk: np.ndarray
    """float64 [T, K]: log q_without_memory(id) for each teacher top-k id; NaN where the engine gave none."""
    logq_chosen: np.ndarray
    """float64 [T]: log q_without_memory(completion_ids[t]) (NaN where unknown)."""
    top1_id: np.ndarray
    """int64 [T]: the engine's argmax id at t (-1 where unknown)."""
    lower_bound: np.ndarray
    """float64 [T]: an upper bound on log q for the ids the engine did not return at t (e.g. the smallest
    logprob it returned there), so G_t computed with it is a lower bound; NaN when everything was returned."""


@dataclass(frozen=True, slots=True)
class ScoringSettings:
    """What make_scorer hands an engine: the gain section's settings plus the teacher's recorded contract."""

    model: str = ""
    """The generating model (the dataset's metadata.teacher.model); an engine must score with this one."""
    temperature: float = 0.0
    """The teacher's sampling temperature (metadata.teacher.temperature)."""
    logprobs: str = "tempered"
    """"tempered" | "raw" (metadata.teacher.logprobs). tempered at temperature T > 0: q = log_softmax(logits / T)
    (no top_p mask, which would give the teacher's ids q = 0); raw, or T == 0: q = log_softmax(logits)."""
    batch_size: int = 8
    """local: samples per prefill batch; vllm: prompts per call."""
    base_url: tuple[str, ...] = ()
    """openai flavor vllm: the server URL(s) (generate.base_url)."""
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 5
    concurrency: int = 16
    prompt_logprobs: int | None = None
    """vllm engines scoring top-K: K, the ids returned per position; None = the teacher's top-k width. A wider K
    leaves fewer of the teacher's ids to the bound (prompt_logprobs.py)."""


class GainScorer(Protocol):
    name: str
    """"local" | "vllm" | "openai-vllm"."""

    def describe(self) -> dict[str, Any]:
        """Model name etc., compared with the dataset's teacher before anything is scored."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]: ...

    def close(self) -> None: ...
