"""Benchmarks for trio_chatruns: the registry measured side by side with raw Trio.

Run ``python -m benchmarks`` (add ``--quick`` for a <60 s pass, ``--json`` for
machine-readable output) or ``nox -s bench``. See ``docs/performance.md``.
"""

from __future__ import annotations

import os
import sys

# Let ``python -m benchmarks`` work from a source checkout without installing:
# if the package is not importable, fall back to ``<repo>/src``. An installed
# package or an explicit PYTHONPATH (e.g. a patched private copy) wins.
try:
    import trio_chatruns  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    _src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    if os.path.isdir(_src):
        sys.path.insert(0, _src)
