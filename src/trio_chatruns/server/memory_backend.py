"""The in-memory run backend: :class:`~.backend.RunBackend` over a ``ChatRunRegistry``.

Each method calls the registry's synchronous, atomic method of the same
name. The ``async`` ones never checkpoint, so a route that reads and then
starts a run is still one atomic step, as it was with the registry alone.
``subscribe`` hands back the registry's own subscription: the streaming path
iterates :class:`~trio_chatruns.ChatRunSubscription` directly, with no
wrapper and no added checkpoint.
"""

from __future__ import annotations

import builtins
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .. import (
        ChatRun,
        ChatRunEvent,
        ChatRunRecord,
        ChatRunRegistry,
        ChatRunSubscription,
        RegistryConfig,
        RegistryStats,
    )
    from .backend import RunEndHook

__all__ = ["MemoryBackend", "registry_hook"]


def registry_hook(registry: ChatRunRegistry) -> RunEndHook | None:
    """The ``on_run_end`` hook ``registry`` was opened with (``None``: none)."""
    return registry._run_end_hook()


class MemoryBackend:
    """The runs of one process, in a :class:`~trio_chatruns.ChatRunRegistry`.

    Attributes:
        registry (ChatRunRegistry): the open registry (owned by the caller).
    """

    __slots__ = ("registry",)

    name = "memory"

    def __init__(self, registry: ChatRunRegistry) -> None:
        self.registry = registry

    def __repr__(self) -> str:
        return f"<MemoryBackend {self.registry!r}>"

    @property
    def config(self) -> RegistryConfig:
        return self.registry.config

    @property
    def on_run_end(self) -> RunEndHook | None:
        return registry_hook(self.registry)

    async def try_start(
        self, conversation_id: str, producer: Any, *, if_active: str = "reject"
    ) -> ChatRun:
        return self.registry.try_start(conversation_id, producer, if_active=if_active)

    async def get(self, conversation_id: str) -> ChatRunRecord | None:
        return self.registry.get(conversation_id)

    async def queued(self, conversation_id: str) -> builtins.list[ChatRunRecord]:
        return self.registry.queued(conversation_id)

    async def list(self, *, active_only: bool = False) -> builtins.list[ChatRunRecord]:
        return self.registry.list(active_only=active_only)

    async def events(self, conversation_id: str, *, after: int = 0) -> builtins.list[ChatRunEvent]:
        return self.registry.events(conversation_id, after=after)

    async def interrupt(self, conversation_id: str) -> bool:
        return self.registry.interrupt(conversation_id)

    async def stats(self) -> RegistryStats:
        return self.registry.stats()

    def subscribe(
        self, conversation_id: str, *, after: int = 0, run_id: str | None = None
    ) -> AbstractAsyncContextManager[ChatRunSubscription]:
        return self.registry.subscribe(conversation_id, after=after, run_id=run_id)

    def active_here(self) -> builtins.list[ChatRunRecord]:
        return self.registry.list(active_only=True)

    def interrupt_here(self, conversation_id: str) -> bool:
        return self.registry.interrupt(conversation_id)
