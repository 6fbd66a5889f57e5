"""How a frame is measured in bytes for the byte budgets
(``RegistryConfig.max_bytes_per_run`` and ``max_retained_bytes``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from typing import Any

__all__ = ["checked_result", "checked_size", "default_frame_size"]

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)

_join = "".join

_compact_json: Callable[[Any], str]

if c_make_encoder is not None:  # CPython's C accelerator, built once rather than per call
    _encode_once = c_make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def _join_chunks(frame: Any) -> str:
        # The chunks of one top-level value: one on 3.12+, which join returns
        # as is (no copy).
        text: str = _join(_encode_once(frame, 0))
        return text

    _compact_json = _join_chunks

else:  # pragma: no cover - Python builds without _json
    _compact_json = _ENCODER.encode


def default_frame_size(frame: Any) -> int:
    """A frame's size in bytes, as the byte budgets count it by default.

    ``bytes``/``bytearray``/``memoryview``: their length; ``str``: the length
    of its UTF-8 encoding; anything else: the UTF-8 length of its compact JSON
    encoding (``json.dumps(frame, separators=(",", ":"), ensure_ascii=False)``),
    which is about what a frame costs on the wire.

    Raises:
        TypeError: the frame is not JSON-serialisable (set
            ``RegistryConfig.frame_size`` to measure such frames).
        ValueError: the frame holds a reference cycle.
    """
    if frame.__class__ is not dict:  # a dict, the common frame, goes straight to JSON
        if isinstance(frame, str):
            return len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))
        if isinstance(frame, (bytes, bytearray)):
            return len(frame)
        if isinstance(frame, memoryview):
            return frame.nbytes
    text = _compact_json(frame)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def checked_size(measure: Callable[[Any], int], frame: Any) -> int:
    """``measure(frame)``, refusing a result that is not an ``int >= 0``.

    Raises:
        TypeError / ValueError: the result is not an int, or is negative.
    """
    return checked_result(measure(frame))


def checked_result(size: Any) -> int:
    """``size``, as returned by a ``frame_size``, if it is an ``int >= 0``
    (an ``int`` subclass other than ``bool`` becomes a plain ``int``).

    Raises:
        TypeError / ValueError: it is not an int, or is negative.
    """
    if size.__class__ is not int:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"frame_size returned {size!r}; it must return an int of bytes")
        size = int(size)
    if size < 0:
        raise ValueError(f"frame_size returned {size!r}; it must return bytes >= 0")
    checked: int = size
    return checked
