"""The README's quickstart runs and shows what it says it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_and_resumes_without_gap_or_duplicate():
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    reply = "'Trio makes structured concurrency feel natural .'"
    assert f"A read the whole reply: {reply}" in out
    assert f"B read the whole reply: {reply}" in out
    assert "B resumed at seq 5" in out
    assert "conv-2 interrupted: status=cancelled, last frame={'type': 'interrupted'}" in out
    assert "after 300s of retention: []" in out
    assert "evicted_ttl=2" in out
