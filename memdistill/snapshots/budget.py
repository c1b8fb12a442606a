"""The token budget: how long a teacher prompt may be, and which whole memory units go to fit it.

A strategy lists its memory as whole units (the preamble, samples) in the order it values them least
first (`MemoryPlan`); the budget walks that list from the other end, keeps each unit that fits in the space
left and skips one that does not, then tries the next (`keep_by_priority`), and records what was wanted and
what was kept (`MemoryCoverage`). An observation too long for any prompt can be cut from its middle first
(`cut_from_middle`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memdistill.core.errors import UserError
from memdistill.snapshots.prompts import Message, PromptCounter
from memdistill.snapshots.strategies import MemoryPlan, MemoryView

AUTO = "auto"
# Tokens by which a unit's cost counted alone may exceed its cost inside the prompt (merges at line ends).
GIVE_BACK_SLACK = 8
# Re-counts of the whole prompt spent per prompt on skipped units that might still fit: each costs as much as
# counting the prompt, and a unit's estimate is off by a few tokens at most, so few are ever worth trying.
GIVE_BACK_TRIES = 8


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


def keep_by_priority(costs: Sequence[int], space: int) -> list[bool]:
    """Which units to keep (costs >= 0 in drop order, so the last is valued most) within `space` tokens.

    Units are taken most valued first; one that does not fit in the space left is skipped and the next is
    tried, so a large unit ranked high never empties a memory that smaller ones would fill. No skipped unit
    fits in the space left at the end.
    """
    keep = [False] * len(costs)
    smallest = min(costs, default=0)
    for position in range(len(costs) - 1, -1, -1):
        if space < smallest:
            break  # nothing left fits: saves the walk over a 6,000-unit memory once the prompt is full
        if costs[position] <= space:
            keep[position] = True
            space -= costs[position]
    return keep


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
    keep: tuple[bool, ...]
    """Per unit of the plan (drop order): whether the budget kept it."""
    coverage: MemoryCoverage

    @property
    def dropped_units(self) -> int:
        return self.keep.count(False)


def _kept_cost(costs: Sequence[int], keep: Sequence[bool]) -> int:
    return sum(cost for cost, kept in zip(costs, keep) if kept)


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
    """Keep the units of `plan` the strategy values most that fit, so the rendered teacher prompt counts at
    most `limit` tokens.

    The choice is made on the per-unit costs (`fixed` is the rest of the prompt), then the rendered prompt
    is counted, since the chat template and merges across line ends make a prompt's count differ from the
    sum of its lines' by a few tokens. While it is over, the choice is made again within the kept units'
    estimate less the excess. Once it fits, skipped units whose cost is within GIVE_BACK_SLACK of the space
    left are tried, most valued first (at most GIVE_BACK_TRIES re-counts), and kept when the counted prompt
    still fits. The prompt is still over the limit only when even an empty memory is. Without a limit
    every unit is kept and the prompt is counted once.
    """
    costs = unit_costs(plan, tokens_before)

    def measure(keep: Sequence[bool]) -> tuple[MemoryView, list[Message], int]:
        kept = plan.kept(keep)
        messages = render(kept)
        return kept, messages, counter.messages(messages)

    if limit is None:
        keep = [True] * len(costs)
        kept, messages, tokens = measure(keep)
    else:
        keep = keep_by_priority(costs, limit - fixed)
        kept, messages, tokens = measure(keep)
        while tokens > limit and any(keep):
            # The kept units' estimate must shrink by at least the excess, so each round keeps strictly less.
            keep = keep_by_priority(costs, _kept_cost(costs, keep) - (tokens - limit))
            kept, messages, tokens = measure(keep)
        # An empty memory is rendered as EMPTY_MEMORY, which the first unit kept replaces: then measure from `fixed`.
        left = limit - (tokens if any(keep) else fixed)
        tries = 0
        for position in range(len(costs) - 1, -1, -1):
            if tries == GIVE_BACK_TRIES:
                break
            if keep[position] or costs[position] - GIVE_BACK_SLACK > left:
                continue
            tries += 1
            wider = [*keep]
            wider[position] = True
            attempt = measure(wider)
            if attempt[2] <= limit:
                keep = wider
                kept, messages, tokens = attempt
                left = limit - tokens
    coverage = MemoryCoverage(plan.samples(), plan.samples(keep), sum(costs), _kept_cost(costs, keep))
    return FittedPrompt(kept, messages, tokens, tuple(keep), coverage)


# Put where an over-long observation's middle was cut; {cut} is the number of tokens taken out.
CUT_MARKER = "\n[... {cut} tokens cut ...]\n"


@dataclass(frozen=True, slots=True)
class CutText:
    text: str
    tokens: int
    """The original text's tokens."""
    kept_tokens: int
    """Tokens of the original text still in `text` (its head and tail; the marker not counted); `tokens` when uncut."""


def cut_from_middle(text: str, max_tokens: int, count: Callable[[str], int]) -> CutText:
    """`text` itself when it counts at most `max_tokens`, else its head and tail around CUT_MARKER, as much of
    both as keeps the whole (marker included) within `max_tokens`.

    The middle goes because a long observation (a log, a page) usually says what it is at the start and how it
    ended at the end. The cut is found by characters, galloping from the token ratio and then bisecting, so a
    1 MB log costs a few dozen counts of texts about the size of the result, and no tokenizer decode is needed.
    When even the marker alone is over `max_tokens`, the marker alone is returned.
    """
    tokens = count(text)
    if tokens <= max_tokens:
        return CutText(text, tokens, tokens)

    def cut(chars: int) -> tuple[str, int]:
        head, tail = text[: (chars + 1) // 2], text[len(text) - chars // 2 :]
        kept = count(head) + count(tail)
        return head + CUT_MARKER.format(cut=max(0, tokens - kept)) + tail, kept

    def fits(chars: int) -> bool:
        return count(cut(chars)[0]) <= max_tokens

    # The largest number of characters kept that fits: the text itself (all of it) does not.
    low, high = 0, len(text)
    guess = max(1, min(len(text) - 1, len(text) * max_tokens // tokens))
    if fits(guess):
        low = guess
        while low * 2 < high and fits(low * 2):
            low *= 2
        high = min(high, low * 2)
    else:
        high = guess
        while high > 1 and not fits(high // 2):
            high //= 2
        low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    result, kept = cut(low)
    return CutText(result, tokens, kept)
