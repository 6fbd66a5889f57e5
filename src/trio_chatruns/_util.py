"""Small helpers shared by the modules: the ``UNSET`` sentinel, argument checks,
and the metaclass that keeps users from building handles themselves."""

from __future__ import annotations

import enum
import inspect
from typing import Any, Final, Literal, NoReturn, TypeVar

__all__ = [
    "UNSET",
    "NoPublicConstructor",
    "Unset",
    "check_active_only",
    "check_conversation_id",
    "check_cursor",
    "check_optional_str",
    "check_run_id",
    "check_start_arguments",
    "is_async_callable",
]

T = TypeVar("T")


class _UnsetType(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _UnsetType.UNSET
"""Sentinel for "leave this field as it is" (``None`` clears the field)."""

Unset = Literal[_UnsetType.UNSET]


class NoPublicConstructor(type):
    """Metaclass that makes ``Cls(...)`` raise ``TypeError``; the package builds
    instances with ``Cls._create(...)``. (The same device as Trio's own.)"""

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


def check_conversation_id(conversation_id: object) -> str:
    """Return ``conversation_id`` if it is a non-empty ``str``.

    Raises:
        TypeError: it is not a ``str``.
        ValueError: it is the empty string.
    """
    if not isinstance(conversation_id, str):
        raise TypeError(f"conversation_id must be a str, not {conversation_id!r}")
    if not conversation_id:
        raise ValueError("conversation_id must be a non-empty str, not ''")
    return conversation_id


def check_optional_str(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``str``, ``None`` or ``UNSET``."""
    if value is not UNSET and value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, None or UNSET, not {value!r}")


def is_async_callable(obj: object) -> bool:
    """Whether ``obj`` is an async function (or an object with an async ``__call__``)."""
    # Fast path for a plain ``async def`` function, on every try_start: one
    # flag test instead of inspect's unwrapping.
    code = getattr(obj, "__code__", None)
    if code is not None and code.co_flags & inspect.CO_COROUTINE:
        return True
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - async callable objects
    )


def check_start_arguments(conversation_id: object, producer: object) -> None:
    """The checks of ``try_start`` (both backends), before anything changes.

    Raises:
        TypeError / ValueError: a bad ``conversation_id``; ``TypeError`` if
            ``producer`` is not an async function.
    """
    check_conversation_id(conversation_id)
    if not is_async_callable(producer):
        raise TypeError(f"producer must be an async function, not {producer!r}")


def check_cursor(after: object) -> int:
    """Return ``after`` if it is an ``int`` seq >= 0 (``TypeError`` /
    ``ValueError`` otherwise; a ``bool`` is not a seq)."""
    if isinstance(after, bool) or not isinstance(after, int):
        raise TypeError(f"after must be an int seq, not {after!r}")
    if after < 0:
        raise ValueError(f"after must be >= 0, not {after!r}")
    return after


def check_run_id(run_id: object) -> None:
    """Raise ``TypeError`` unless ``run_id`` is a ``str`` or ``None``."""
    if run_id is not None and not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str or None, not {run_id!r}")


def check_active_only(active_only: object) -> None:
    """Raise ``TypeError`` unless ``active_only`` is a ``bool``."""
    if not isinstance(active_only, bool):
        raise TypeError(f"active_only must be a bool, not {active_only!r}")
