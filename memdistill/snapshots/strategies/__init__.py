"""Memory-formation strategies: which memory entries the teacher sees for each sample.

Each strategy is a small class in its own module, registered by name with `@register`. Adding one is one
new file here plus its import below.
"""

from memdistill.snapshots.strategies import exclude_current, failure_focus, full_memory, random_sampling, rolling_window  # noqa: F401  (registration)
from memdistill.snapshots.strategies.base import (
    PREAMBLE,
    MemoryPlan,
    MemoryUnit,
    MemoryView,
    Strategy,
    StrategyParams,
    build_memory_plan,
    build_memory_plans,
    build_memory_view,
    get_strategy,
    register,
    strategy_names,
)

__all__ = ["PREAMBLE", "MemoryPlan", "MemoryUnit", "build_memory_plan", "build_memory_plans", "MemoryView", "Strategy", "StrategyParams", "build_memory_view", "get_strategy", "register", "strategy_names"]
