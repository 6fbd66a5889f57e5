"""``Host`` and ``Origin`` values: parse, normalize and match them.

Pure functions, no I/O, no imports from the rest of the server, so that
:mod:`.config` can validate ``--allowed-host`` and ``--allow-origin`` values
when settings are built, and :mod:`.cross_site` can check requests with the
same rules. The grammar is RFC 3986 §3.2.2 (``host[:port]``, IPv6 in
brackets) and the serialization of an origin from the HTML standard
(``scheme://host[:port]``, lowercase, default port omitted).
"""

from __future__ import annotations

import functools
import ipaddress
import re

import attrs

__all__ = [
    "DEFAULT_PORTS",
    "LOOPBACK_NAMES",
    "HostPattern",
    "bare_address",
    "is_loopback_host",
    "is_wildcard",
    "normalize_origin",
    "parse_allowed_host",
    "parse_host",
    "show",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Names accepted in ``Host`` for a connection that arrived on a loopback address."""

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# A DNS name (RFC 1123 labels, ASCII; IDNs arrive as punycode) or an IPv4 literal.
_REG_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,252})")
_PORT = re.compile(r"[0-9]{1,5}")
# Every request parses its Host and Origin; a server sees few distinct values.
# Bounded, so values an attacker makes up cannot grow it.
_CACHED = 512


def show(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error message: ASCII only, at most ``limit`` characters."""
    return ascii(text if len(text) <= limit else text[:limit] + "...")


@functools.lru_cache(maxsize=_CACHED)
def parse_host(value: str) -> tuple[str, int | None]:
    """Split a ``Host`` value (or the authority of an origin) into name and port.

    The name is lowercased; an IPv6 literal loses its brackets (``[::1]:8000``
    → ``("::1", 8000)``). The port is ``None`` when absent.

    Raises:
        ValueError: not ``name[:port]`` or ``[ipv6][:port]`` (RFC 3986 §3.2.2),
            or a port past 65535.
    """
    text = value.strip().lower()
    if text.startswith("["):
        name, sep, rest = text[1:].partition("]")
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise ValueError(f"malformed host {show(value)}") from None
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed host {show(value)}")
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if _REG_NAME.fullmatch(name) is None:
            raise ValueError(f"malformed host {show(value)}")
    if port_text is None:
        return name, None
    if _PORT.fullmatch(port_text) is None or int(port_text) > 65535:
        raise ValueError(f"malformed port in host {show(value)}")
    return name, int(port_text)


@functools.lru_cache(maxsize=_CACHED)
def bare_address(address: str) -> str:
    """``address`` as the canonical text of an IP (IPv4-mapped IPv6 unwrapped), or as is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


@functools.lru_cache(maxsize=_CACHED)
def is_loopback_host(host: str) -> bool:
    """``True`` for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare_address(name)).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """``True`` for the addresses meaning "every interface": ``0.0.0.0``, ``::``, empty."""
    return host.strip("[]") in ("", "0.0.0.0", "::")


@attrs.frozen
class HostPattern:
    """One ``--allowed-host`` entry: a name, with a port or for every port; or ``*``."""

    name: str
    """Lowercased host name or IP (IPv6 without brackets); ``"*"`` matches every host."""
    port: int | None = None
    """The one port accepted, or ``None`` for any."""

    def matches(self, name: str, port: int | None) -> bool:
        """Does ``Host: name:port`` match this pattern?"""
        if self.name == "*":
            return True
        return name == self.name and (self.port is None or port == self.port)


def parse_allowed_host(value: str) -> HostPattern:
    """Read an ``--allowed-host`` value: ``name``, ``name:port``, ``[v6]:port`` or ``*``.

    Raises:
        ValueError: anything else.
    """
    if value.strip() == "*":
        return HostPattern("*")
    try:
        name, port = parse_host(value)
    except ValueError:
        raise ValueError(
            f"allowed host {show(value)} is not a name[:port], an [IPv6][:port] or '*'"
        ) from None
    return HostPattern(bare_address(name), port)


@functools.lru_cache(maxsize=_CACHED)
def normalize_origin(value: str) -> str:
    """The serialized form of an origin: ``scheme://host[:port]``, lowercase, default port dropped.

    Raises:
        ValueError: not an ``http``/``https`` origin (a path, a query, user
            info, ``null`` or another scheme).
    """
    text = value.strip()
    scheme, sep, authority = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https") or not authority:
        raise ValueError(f"origin {show(value)} is not 'http(s)://host[:port]'")
    if any(c in authority for c in "/?#@ "):
        raise ValueError(f"origin {show(value)} has more than scheme://host[:port]")
    name, port = parse_host(authority)
    host = f"[{name}]" if ":" in name else name
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
