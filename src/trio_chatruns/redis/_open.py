"""Opening the Redis backend: :func:`open_redis_chat_runs` checks its
arguments and runs a worker's tasks in three nurseries (hook calls, the
worker's services, the runs it owns), closing them in that order's reverse."""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import trio

from .._config import RegistryConfig
from .._counters import Counters
from .._registry import _raise_unwrapped, _same_error
from .._run_end import RunEndHook
from .._util import is_async_callable
from ._backend import RedisChatRuns
from ._errors import unavailable_on_connection_errors
from ._hook_order import OrderedRunEndHooks
from ._keys import KeyLayout
from ._owner_duties import listen_interrupts, renew_leases
from ._store import RedisStore

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["LEASE", "WRITE_TIMEOUT", "open_redis_chat_runs"]

LEASE = 10.0
"""Seconds an owner's lease lasts without renewal; renewed every third of it."""

WRITE_TIMEOUT = 5.0
"""Seconds frames may stay unwritten (Redis unreachable) before the run ends ``failed``."""


def _positive_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return seconds


@asynccontextmanager
async def open_redis_chat_runs(
    client: coredis.Redis[Any],
    config: RegistryConfig | None = None,
    *,
    lease: float = LEASE,
    write_timeout: float = WRITE_TIMEOUT,
    worker_id: str | None = None,
    key_prefix: str = "trio_chatruns",
    on_run_end: RunEndHook | None = None,
) -> AsyncIterator[RedisChatRuns]:
    """Open this worker's :class:`RedisChatRuns` over a coredis client.

    Usage::

        async with coredis.Redis.from_url("redis://127.0.0.1:6379/0") as client:
            async with open_redis_chat_runs(client) as runs:
                run = await runs.try_start("conv-1", producer)

    Every worker sharing the Redis (and ``key_prefix``) sees the same runs;
    give them the same ``config``. Leaving the block refuses new runs,
    interrupts the runs this worker owns (they end ``cancelled``), gives
    their writers up to ``write_timeout`` + 5 s to write the ends, closes
    this worker's subscribers, and returns when every task has exited. An
    exception raised in the body propagates as itself.

    Args:
        client: an entered ``coredis.Redis`` (``async with`` it first).
        config (RegistryConfig | None): limits; ``None`` for the defaults.
        lease (float, seconds > 0): how long a run's owner holds it without
            renewing; renewed every ``lease / 3``. A run whose owner stops
            renewing (killed, partitioned) is ended ``failed`` by the first
            worker that looks at it after the lease lapsed. Default 10.
        write_timeout (float, seconds > 0): how long frames may stay
            unwritten before their run ends ``failed``. Default 5.
        worker_id (str | None): this worker's name in Redis; default
            ``host:pid:random``. Must be unique among live workers.
        key_prefix (str): the prefix of every key (default ``trio_chatruns``).
        on_run_end: ``async def hook(record, events)``, called once for every
            run that ends, by the worker that wrote the end to Redis (the
            owner; the worker that ended a run whose owner's lease lapsed;
            the worker whose ``interrupt`` start cancelled queued runs), with
            the final record and the frames still in the run's stream. For
            one conversation the calls run one at a time in the order the
            runs ended, across workers (``_hook_order.py``), each bounded by
            ``config.run_end_timeout``; failures are logged and counted
            (``run_end_failures``). Leaving the block waits for them. Give
            every worker a hook, or none: a worker waits for the calls of
            earlier ends (up to ``run_end_timeout`` + 5 s without progress).

    Raises:
        TypeError / ValueError: a bad argument.
        RedisUnavailable: Redis cannot be reached when opening.
    """
    if config is None:
        config = RegistryConfig()
    elif not isinstance(config, RegistryConfig):
        raise TypeError(f"config must be a RegistryConfig or None, not {config!r}")
    if on_run_end is not None and not is_async_callable(on_run_end):
        raise TypeError(f"on_run_end must be an async function or None, not {on_run_end!r}")
    lease = _positive_seconds("lease", lease)
    write_timeout = _positive_seconds("write_timeout", write_timeout)
    if worker_id is None:
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
    elif not isinstance(worker_id, str) or not worker_id:
        raise TypeError(f"worker_id must be a non-empty str or None, not {worker_id!r}")
    if not isinstance(key_prefix, str) or not key_prefix:
        raise TypeError(f"key_prefix must be a non-empty str, not {key_prefix!r}")
    store = RedisStore(client, KeyLayout(key_prefix), config, lease)
    body_error: BaseException | None = None
    counters = Counters()
    try:
        # Outermost, never cancelled: the hooks of every run that ended,
        # including those the closing cancelled, run to their own timeout.
        async with trio.open_nursery() as hooks_nursery, trio.open_nursery() as services:
            hooks = None
            if on_run_end is not None:
                hooks = OrderedRunEndHooks(
                    on_run_end, config.run_end_timeout, hooks_nursery, counters, store
                )
                store.hook_data = True
            async with trio.open_nursery() as runs_nursery:
                backend = RedisChatRuns._create(
                    store,
                    config,
                    worker_id,
                    lease,
                    write_timeout,
                    runs_nursery,
                    services,
                    hooks,
                    counters,
                )
                with unavailable_on_connection_errors("opening the backend"):
                    await services.start(listen_interrupts, store, worker_id, backend._on_message)
                services.start_soon(renew_leases, store, backend._owned, lease, backend._on_renewed)
                try:
                    yield backend
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    backend._close()
            services.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Nested nurseries: a body error may come wrapped more than once.
        # Peel the wrappers down to the one around it, then unwrap as the
        # core's registry does.
        while (
            len(group.exceptions) == 1
            and isinstance(group.exceptions[0], BaseExceptionGroup)
            and not (body_error is not None and _same_error(group.exceptions[0], body_error))
        ):
            group = group.exceptions[0]
        _raise_unwrapped(group, body_error)
