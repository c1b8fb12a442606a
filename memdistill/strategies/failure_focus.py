"""failure_focus: failed samples first, then the most recent others, within `max_memory_samples` samples.

The sample itself is never included. Entries before the first observation (agent notes) are kept.
"""

from memdistill.errors import UserError
from memdistill.strategies.base import register


@register("failure_focus")
def failure_focus(snapshot, sample, params, failed):
    if params.max_memory_samples < 0:
        raise UserError(f"max_memory_samples: must be at least 0, got {params.max_memory_samples}")
    others = [s for s in snapshot.samples if s.sample_idx != sample.sample_idx]
    failures = [s for s in others if failed[s.sample_idx]]
    successes = [s for s in others if not failed[s.sample_idx]]
    # Most recent first within each group, so a tight budget keeps the freshest lessons.
    ranked = sorted(failures, key=lambda s: -s.sample_idx) + sorted(successes, key=lambda s: -s.sample_idx)
    chosen = ranked[: params.max_memory_samples]
    preamble = range(snapshot.samples[0].observation.index)
    return tuple(preamble) + tuple(index for s in chosen for index in s.entry_indices)
