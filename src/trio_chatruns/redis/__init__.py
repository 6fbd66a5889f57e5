"""A Redis Streams backend for several workers sharing one set of runs.

``open_redis_chat_runs(client, config)`` gives the operations of
:class:`~trio_chatruns.ChatRunRegistry` (async where Redis needs a round
trip) over runs that any worker sharing the Redis can start, follow,
resume and interrupt. Needs the ``[redis]`` extra (coredis). See
``docs/redis.md`` for the key layout, the scripts and the guarantees.
"""

from __future__ import annotations

from ._backend import RedisChatRuns
from ._errors import RedisUnavailable
from ._follower import RedisSubscription
from ._open import LEASE, WRITE_TIMEOUT, open_redis_chat_runs
from ._owned import RedisChatRun

__all__ = [
    "LEASE",
    "WRITE_TIMEOUT",
    "RedisChatRun",
    "RedisChatRuns",
    "RedisSubscription",
    "RedisUnavailable",
    "open_redis_chat_runs",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("trio_chatruns.redis."):
        _obj.__module__ = __name__
del _name, _obj
