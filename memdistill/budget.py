"""The token budget: how long a teacher prompt may be, and which whole memory units go to fit it.

A strategy lists its memory as whole units (the preamble, samples) in the order it values them least
first (`MemoryPlan`); the budget drops the fewest leading units of that order so the rendered prompt fits,
and records what was wanted and what was kept (`MemoryCoverage`).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memdistill.errors import UserError
from memdistill.prompts import Message, PromptCounter
from memdistill.strategies import MemoryPlan, MemoryView

AUTO = "auto"
# Tokens by which a unit's cost counted alone may exceed its cost inside the prompt (merges at line ends).
GIVE_BACK_SLACK = 8


def resolve_max_prompt_tokens(value: int | str | None, context_length: int | None, answer_tokens: int) -> int | None:
    """`max_prompt_tokens` as a number: itself, None (no limit), or for 'auto' the context minus the answer."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if value != AUTO:
        raise UserError(f"max_prompt_tokens: expected 'auto', an integer or null, got {value!r}")
    if context_length is None:
        raise UserError(
            "max_prompt_tokens: 'auto' needs the teacher's context length, which is unknown for this tokenizer; "
            "set snapshots.context_length or give max_prompt_tokens as a number"
        )
    budget = context_length - answer_tokens
    if budget < 1:
        raise UserError(f"max_prompt_tokens: auto leaves {budget} tokens (context {context_length} - max_tokens {answer_tokens})")
    return budget


def units_to_drop(costs: Sequence[int], allowed: int) -> int:
    """The fewest leading units (costs in drop order, each >= 0) to drop so the rest costs at most `allowed`.

    Returns len(costs) when even no units is over (allowed < 0).
    """
    prefix = [0, *itertools.accumulate(costs)]
    excess = prefix[-1] - allowed
    if excess <= 0:
        return 0
    return min(len(costs), bisect.bisect_left(prefix, excess))


def as_ranges(numbers: Sequence[int]) -> list[list[int]]:
    """Sorted distinct integers as inclusive [first, last] runs: a 6,000-sample memory's list stays a few pairs."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return runs


@dataclass(frozen=True, slots=True)
class MemoryCoverage:
    """What a prompt's strategy wanted from the memory and what the budget kept (tokens of the memory lines)."""

    samples_wanted: list[int]
    samples_kept: list[int]
    tokens_wanted: int
    tokens_kept: int

    @property
    def coverage(self) -> float:
        """Kept / wanted memory tokens; 1.0 when the strategy wanted no memory."""
        return round(self.tokens_kept / self.tokens_wanted, 6) if self.tokens_wanted else 1.0


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    view: MemoryView
    messages: list[Message]
    tokens: int
    dropped_units: int
    coverage: MemoryCoverage


def unit_costs(plan: MemoryPlan, tokens_before: Sequence[int]) -> list[int]:
    """Each unit's cost in drop order; `tokens_before[j]` is the cost of entries [0, j)."""
    return [tokens_before[u.stop] - tokens_before[u.start] for u in plan.units]


def fit_to_budget(
    plan: MemoryPlan,
    render: Callable[[MemoryView], list[Message]],
    counter: PromptCounter,
    tokens_before: Sequence[int],
    limit: int | None,
    fixed: int,
) -> FittedPrompt:
    """Drop the fewest leading units of `plan` so the rendered teacher prompt counts at most `limit` tokens.

    First cut from the per-unit costs (`fixed` is the rest of the prompt), then measure the rendered
    prompt, since the chat template and merges across line ends shift the count by a few tokens: drop
    more while it is over, give units back while it still fits. The prompt is still over the limit only
    when even an empty memory is. Without a limit nothing is dropped and the prompt is counted once.
    """
    costs = unit_costs(plan, tokens_before)

    def measure(drop: int) -> tuple[MemoryView, list[Message], int]:
        kept = plan.kept(drop)
        messages = render(kept)
        return kept, messages, counter.messages(messages)

    dropped = 0 if limit is None else units_to_drop(costs, limit - fixed)
    kept, messages, tokens = measure(dropped)
    if limit is not None:
        while tokens > limit and dropped < len(costs):
            allowed = sum(costs[dropped:]) - (tokens - limit)
            dropped += max(1, units_to_drop(costs[dropped:], allowed))
            kept, messages, tokens = measure(dropped)
        while dropped > 0:
            # Skip the costly re-count when the unit to give back clearly cannot fit.
            if limit - tokens < costs[dropped - 1] - GIVE_BACK_SLACK:
                break
            wider = measure(dropped - 1)
            if wider[2] > limit:
                break
            dropped -= 1
            kept, messages, tokens = wider
    coverage = MemoryCoverage(plan.samples(), plan.samples(dropped), sum(costs), sum(costs[dropped:]))
    return FittedPrompt(kept, messages, tokens, dropped, coverage)
