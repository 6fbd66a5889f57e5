"""``--redis`` URL checking: a bad URL is refused by name, never with its password."""

from __future__ import annotations

import pytest

from trio_chatruns.server.config import ServerSettings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis:/:hunter2@db.internal:6379", "***@db.internal:6379"),
        ("http://u:hunter2@db.internal", "***@db.internal"),
        ("http://u:hun@ter2@db.internal", "***@db.internal"),  # an "@" in the password
    ],
)
def test_a_malformed_redis_url_is_refused_without_its_password(url: str, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        ServerSettings(redis=url)
    message = str(caught.value)
    assert "hunter2" not in message and "ter2" not in message
    assert "db.internal" in message and "redis://" in message
    assert message.endswith(f"not {shown!r}")  # the host, never the user or password


def test_a_redis_url_that_is_not_a_string_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="redis must be a URL") as caught:
        ServerSettings(redis=6379)  # type: ignore[arg-type]
    assert str(caught.value).endswith("not 6379")


@pytest.mark.parametrize("url", ["localhost:6379", "redis://", ""])
def test_a_malformed_redis_url_is_named(url: str) -> None:
    with pytest.raises(ValueError, match="redis must be a URL") as caught:
        ServerSettings(redis=url)
    assert str(caught.value).endswith(f"not {url!r}")  # the bad value itself
