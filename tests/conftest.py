from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

# "ci" runs on every `nox -s tests`; "long" is for a soak: HYPOTHESIS_PROFILE=long.
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    stateful_step_count=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=20, deadline=None)
# "mutate" is for `nox -s mutate` (tools/mutate.py): fewer examples, so each
# mutant is tested in seconds, and derandomized, so a mutant's verdict does not
# change from one run to the next.
settings.register_profile(
    "mutate",
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# -- hangs are failures --------------------------------------------------------
#
# pytest-timeout (``timeout`` in pyproject.toml) ends any test that runs too long
# in real time, a busy loop included. Inside Trio a hang is friendlier to catch:
# every async test runs under ``trio.fail_after``, so a test that waits for
# something that never comes fails with its own name and where it waited. Under
# ``autojump_clock`` the mock clock jumps straight to that deadline once every
# task is blocked, so such a hang fails at once instead of blocking the run.

REAL_SECONDS = 240.0
"""Deadline of an async test on the real clock: above the tests' own bounds (a
CLI test may wait 15 s for a subprocess to start, then more), which on a
loaded machine add up to a minute; the slowest take ~10 s when idle."""
MOCK_SECONDS = 100_000.0
"""Deadline of an async test on a ``MockClock`` (tests sleep ~1,300 s at most)."""


class TestHung(AssertionError):
    """An async test was still waiting at its deadline."""


REAL_CLOCK_TESTS = (
    "tests/server/",
    "tests/redisbackend/",
    "tests/test_examples.py",
    "tests/test_rr_proxy.py",
)
"""The tests that run on the real clock (real servers, Redis, subprocesses);
every other async test, the core's, runs on a ``MockClock``."""


def _with_deadline(testfunc: Any, nodeid: str) -> Any:
    @functools.wraps(testfunc)
    async def test_with_deadline(**kwargs: Any) -> Any:
        mock = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
        if not mock and not nodeid.startswith(REAL_CLOCK_TESTS):
            # A hang on the real clock costs its full deadline (and mutmut
            # 240 s per mutant); on the autojump clock it fails at once.
            raise AssertionError(
                f"{nodeid}: a core test runs on Trio's MockClock; take the autojump_clock fixture"
            )
        seconds = MOCK_SECONDS if mock else REAL_SECONDS
        kind = "Trio mock-clock" if mock else "real"
        hung = f"{nodeid} hung: still waiting after {seconds:g} s of {kind} time"
        # Only this deadline makes a TestHung: a test's own bound (its
        # ``fail_after(5)``) raising TooSlowError is reported as itself, with
        # the line that waited, not as a hang at the test's deadline.
        deadline = trio.move_on_after(seconds)
        try:
            with deadline:
                return await testfunc(**kwargs)
        except BaseException as error:
            if deadline.cancel_called:
                raise TestHung(hung) from error
            raise
        raise TestHung(hung)

    return test_with_deadline


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # Runs before pytest-trio's own hook wraps the function to run it under Trio.
    testfunc = getattr(item, "obj", None)
    if (
        item.get_closest_marker("trio") is not None
        and inspect.iscoroutinefunction(testfunc)
        and not hasattr(testfunc, "hypothesis")
    ):
        item.obj = _with_deadline(testfunc, item.nodeid)  # type: ignore[attr-defined]
    yield
