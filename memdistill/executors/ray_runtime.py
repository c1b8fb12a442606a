"""Connecting to Ray: an existing cluster at `ray_address`, or a local instance started for this run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from memdistill.errors import UserError

log = logging.getLogger(__name__)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("executor: 'ray' needs Ray installed: pip install 'memdistill[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None, num_workers: int) -> Iterator[Any]:
    """Yield the `ray` module connected to a cluster; a local instance started here is shut down after.

    Without an address a local instance gets `num_workers` logical CPUs: that many teacher actors or
    convert tasks run at once. An already connected driver (a test, a notebook, a benchmark) is reused
    as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        options["address"] = address
    else:
        options["num_cpus"] = num_workers
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local instance"
        raise UserError(f"ray_address: could not connect to {where} ({str(exc).splitlines()[0]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def unwrap_task_error(exc: BaseException) -> BaseException:
    """The user's error inside a failed Ray task (e.g. a bad line), so the CLI prints its one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc
