"""rolling_window: the last `window_k` entries before the sample's observation."""

from memdistill.errors import UserError
from memdistill.strategies.base import register


@register("rolling_window")
def rolling_window(snapshot, sample, params, failed):
    if params.window_k < 1:
        raise UserError(f"window_k: must be at least 1, got {params.window_k}")
    start = sample.observation.index
    return tuple(range(max(0, start - params.window_k), start))
