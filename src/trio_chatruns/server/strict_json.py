"""Read request bodies as strict JSON: UTF-8 only, no ``NaN``, no duplicate keys.

Python's :func:`json.loads` is lenient where RFC 8259 leaves room: given bytes
it guesses UTF-16 or UTF-32, it reads ``NaN``, ``Infinity`` and ``-Infinity``
(not JSON at all), it keeps the *last* of two equal keys, and ``\\ud800``
escapes yield strings that are not Unicode text. Two parsers that disagree on
a body (a proxy keeping the first ``"prompt"``, this server the last) are a
classic request-smuggling gap, so :func:`loads_strict` refuses all of it, with
a message that names the problem.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

__all__ = ["loads_strict"]

_MAX_SHOWN = 40


def _show(text: str) -> str:
    return ascii(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...")


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in JSON (RFC 8259 has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {_show(text)} is too large for a 64-bit float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_show(key)} in a JSON object")
        result[key] = value
    return result


def _check_text(value: Any) -> None:
    """Raise ``ValueError`` if any string (or key) in ``value`` holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    "JSON string is not valid Unicode (it holds a lone surrogate such as '\\ud800')"
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads_strict(body: bytes) -> Any:
    """Parse ``body`` as one strict JSON text (RFC 8259) and return the value.

    The rules: the bytes are UTF-8 (RFC 8259 §8.1; no byte order mark, no
    UTF-16/32); no ``NaN``, ``Infinity`` or ``-Infinity``, nor a number that
    overflows a 64-bit float (``1e400``); no object with two
    equal keys (§4 leaves it open; here it is an error); every string is
    Unicode text (no lone surrogate escape); nesting is bounded by Python's
    recursion limit.

    Args:
        body: the request body as received.

    Returns:
        The decoded value (``dict``, ``list``, ``str``, ``int``, ``float``,
        ``bool`` or ``None``).

    Raises:
        ValueError: the body breaks one of the rules; the message names which
            (and where), fit to send back to the client.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"body is not UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start}"
        ) from None
    if text.startswith("\ufeff"):
        raise ValueError("body starts with a byte order mark; send UTF-8 JSON without one")
    try:
        value = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    _check_text(value)
    return value
