"""Test automation: ``nox`` runs the test suite on Python 3.10-3.13, the linter
and the type checker. ``nox -s bench`` runs the benchmarks, ``nox -s mutate``
the mutation tests and ``nox -s realclock`` the real-clock tests 20 times in a
row (docs/testing.md)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True


def _put_pyenv_versions_on_path() -> None:
    """Let nox find ``python3.X`` on machines where pyenv installed them.

    A pyenv shim for a version that is installed but not selected exists on
    PATH yet fails when run; prepend each installed version's own ``bin``
    instead, so one ``nox`` runs the whole matrix without ``pyenv local``.
    """
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    extra = []
    for version in PYTHONS:
        found = shutil.which(f"python{version}")
        if found and subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
            continue
        candidates = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin")))
        if candidates:
            extra.append(candidates[-1])
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])


_put_pyenv_versions_on_path()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, warnings as errors. Extra args go to pytest."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-W", "error", *session.posargs)


@nox.session(python="3.13")
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.12")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, checked as Python 3.10 code."""
    session.install("-e", ".[test]", "mypy>=1.10", "exceptiongroup>=1.2")
    session.run("mypy")


@nox.session(python="3.12")
def mutate(session: nox.Session) -> None:
    """Mutation testing with mutmut (minutes; see docs/testing.md). Not a default session.

    ``nox -s mutate`` runs both groups afresh; ``-- core`` or ``-- server`` one
    group; ``-- --quick`` re-tests only what changed since the last run.
    """
    session.install("-e", ".[test]", "mutmut>=3.8,<4")
    session.run("python", "tools/mutate.py", *session.posargs)


@nox.session(python="3.12")
def realclock(session: nox.Session) -> None:
    """The real-clock tests 20 times in a row (tools/realclock.py; docs/testing.md).

    ``nox -s realclock -- --runs 20 --parallel 2``; not a default session.
    """
    session.install("-e", ".[test]")
    session.run("python", "tools/realclock.py", *session.posargs)


@nox.session(python="3.12")
def bench(session: nox.Session) -> None:
    """The benchmarks; ``nox -s bench -- --quick`` for a short run."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
