"""Small helpers shared by the modules: the ``UNSET`` sentinel, argument checks,
and the metaclass that keeps users from building handles themselves."""

from __future__ import annotations

import enum
from typing import Any, Final, Literal, NoReturn, TypeVar

__all__ = ["UNSET", "NoPublicConstructor", "Unset", "check_conversation_id", "check_optional_str"]

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
