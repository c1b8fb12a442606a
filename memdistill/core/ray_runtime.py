"""Connecting to Ray: an existing cluster at `ray_address`, or a local instance started for this run."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memdistill.core.errors import UserError

log = logging.getLogger(__name__)

# Seconds to wait for a cluster's head to accept a connection before saying nothing answers there.
PROBE_TIMEOUT_S = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("executor: 'ray' needs Ray installed: pip install 'memdistill[ray]'") from None
    return ray


def host_and_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit `host:port` or `ray://host:port` address; None for `auto` and the like."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    """Fail at once when nothing listens at an explicit address: `ray.init` would retry for many minutes."""
    target = host_and_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or f"no answer within {PROBE_TIMEOUT_S:.0f}s"
        raise UserError(
            f"ray_address: nothing answers at {address} ({reason}); start the cluster first (`ray start --head`) "
            "or leave ray_address empty to run on a local Ray instance"
        ) from None


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
        check_reachable(address)
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


def absolute_if_local(name: str) -> str:
    """A local folder (a tokenizer, a model) as an absolute path, since workers run in folders of their own;
    a hub id or a model name as it is."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def unwrap_task_error(exc: BaseException) -> BaseException:
    """The user's error inside a failed Ray task (e.g. a bad line), so the CLI prints its one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc
