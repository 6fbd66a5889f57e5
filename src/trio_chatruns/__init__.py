"""trio_chatruns: resumable, bounded-memory streaming of LLM chat runs for Trio.

One *run* per conversation: a producer task pushing frames, a bounded replay
buffer with sequence numbers, and a fan-out to live subscribers that never
makes the producer wait. Clients resume from the last seq they saw. Finished
runs are retained for late reconnects, then evicted (TTL plus an LRU cap).

Start with :func:`open_chat_run_registry`; see ``docs/`` for the model.
"""

from __future__ import annotations

from ._config import (
    MAX_EVENTS_PER_RUN,
    MAX_QUEUED_PER_CONVERSATION,
    MAX_RETAINED_TERMINAL,
    RUN_END_TIMEOUT,
    SUBSCRIBER_BUFFER,
    TERMINAL_RETENTION,
    RegistryConfig,
)
from ._exceptions import (
    ChatRunError,
    ReplayGap,
    RunAlreadyActive,
    RunNotFound,
    RunQueueFull,
    RunTerminated,
    SubscriberLagged,
)
from ._frame_size import default_frame_size
from ._records import ChatRunEvent, ChatRunRecord, RegistryStats
from ._registry import ChatRunRegistry, open_chat_run_registry
from ._run import ChatRun
from ._run_end import RunEndHook
from ._status import ChatRunStatus, StartPolicy
from ._subscription import ChatRunSubscription
from ._util import UNSET

__version__ = "0.2.0"

__all__ = [
    "MAX_EVENTS_PER_RUN",
    "MAX_QUEUED_PER_CONVERSATION",
    "MAX_RETAINED_TERMINAL",
    "RUN_END_TIMEOUT",
    "SUBSCRIBER_BUFFER",
    "TERMINAL_RETENTION",
    "UNSET",
    "ChatRun",
    "ChatRunError",
    "ChatRunEvent",
    "ChatRunRecord",
    "ChatRunRegistry",
    "ChatRunStatus",
    "ChatRunSubscription",
    "RegistryConfig",
    "RegistryStats",
    "ReplayGap",
    "RunAlreadyActive",
    "RunEndHook",
    "RunNotFound",
    "RunQueueFull",
    "RunTerminated",
    "StartPolicy",
    "SubscriberLagged",
    "default_frame_size",
    "open_chat_run_registry",
]

# Make the public objects say where users import them from.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("trio_chatruns."):
        _obj.__module__ = __name__
del _name, _obj
