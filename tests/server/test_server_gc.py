"""The collector settings of a serving process (``ServerSettings.tune_gc``, ``--gc-defaults``).

``serve`` with ``tune_gc=True`` freezes what is alive at startup and raises
the young-generation threshold while it serves, and puts both back when it
returns; without it (the default when embedding) the collector is left alone.
``trio-chatruns serve`` tunes unless given ``--gc-defaults``.
"""

from __future__ import annotations

import gc
import warnings

import httpx

from trio_chatruns.server import ScriptedModel, ServerSettings, cli
from trio_chatruns.server.gc_tuning import YOUNG_THRESHOLD, tuned_gc

from helpers import start_serving

# Its own model: ``from conftest import ...`` finds whichever conftest.py was
# imported first as ``conftest`` (tests/redisbackend's, when both run).
FAST = ScriptedModel(tokens_per_second=250.0, reply_tokens=60, pause_tokens=3)


async def test_serve_tunes_the_collector_while_it_serves_and_restores_it(nursery):
    before = gc.get_threshold()
    with warnings.catch_warnings():
        # serve() collects at startup: what earlier tests left unclosed is theirs.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    running, done = await start_serving(
        nursery, FAST, ServerSettings(port=0, tune_gc=True, graceful_timeout=2.0)
    )
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() > 1000  # the modules and the app, frozen at startup
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        assert (await client.get("/v1/stats")).status_code == 200
    running.shutdown()
    await done.wait()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_embedding_leaves_the_collector_alone_by_default(start_server):
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    running = await start_server()
    assert running.server.settings.tune_gc is False
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_tuned_gc_restores_the_settings_when_the_block_raises():
    before = gc.get_threshold()
    try:
        with tuned_gc():
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
            assert gc.get_freeze_count() > 1000
            raise KeyError("x")
    except KeyError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_cli_tunes_unless_told_to_keep_the_defaults(monkeypatch):
    seen = []

    def fake_run(main, model, settings, registry_config):
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli.trio, "run", fake_run)
    assert cli.main(["serve"]) == 0
    assert cli.main(["serve", "--gc-defaults"]) == 0
    monkeypatch.setenv("TRIO_CHATRUNS_GC_DEFAULTS", "1")
    assert cli.main(["serve"]) == 0
    assert [s.tune_gc for s in seen] == [True, False, False]
