"""Advice for memories that do not fit the token budget, worded for the settings the run used: never "set it to
auto" to a run where it is auto, never "use rolling_window" to a rolling_window run. The snapshots log and the
stats summary both give it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def smaller_memory_advice(strategy: str | None, params: Mapping[str, Any]) -> str:
    """How to make the memory each prompt wants smaller, for the strategy the run used."""
    if strategy == "rolling_window" and params.get("window_k") is not None:
        return f"lower window_k (now {params['window_k']})"
    if strategy == "failure_focus" and params.get("max_memory_samples") is not None:
        return f"lower max_memory_samples (now {params['max_memory_samples']})"
    if strategy == "random_sampling" and params.get("subset_size") is not None:
        return f"lower subset_size (now {params['subset_size']})"
    smaller = [name for name in ("rolling_window", "failure_focus") if name != strategy]
    return f"choose a strategy that shows a smaller memory ({', '.join(smaller)})"


def budget_advice(max_prompt_tokens: int | str | None) -> str:
    """How to give the prompt more room, for the max_prompt_tokens setting the run used."""
    if max_prompt_tokens == "auto":
        return "use a teacher with a longer context (max_prompt_tokens is already auto: the context minus generate.max_tokens)"
    if max_prompt_tokens is None:
        return "use a teacher with a longer context"
    return (f"raise max_prompt_tokens (now {max_prompt_tokens}) or set it to auto (the teacher's context minus "
            f"generate.max_tokens), or use a teacher with a longer context")
