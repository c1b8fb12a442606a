"""exclude_current: every entry except the sample's own Observation, Action and Feedback."""

from memdistill.strategies.base import register


@register("exclude_current")
def exclude_current(snapshot, sample, params, failed):
    own = set(sample.entry_indices)
    return tuple(entry.index for entry in snapshot.entries if entry.index not in own)
