"""``trio-chatruns`` — the command line.

``trio-chatruns serve`` runs the chat server on embedded defaults (the
scripted model, ``127.0.0.1:8000``). ``--producer openai`` streams from an
OpenAI-compatible endpoint; ``--producer module:function`` runs your own
model. ``trio-chatruns serve --help`` lists every option.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from importlib import metadata

import trio

from .. import (
    MAX_EVENTS_PER_RUN,
    MAX_RETAINED_TERMINAL,
    SUBSCRIBER_BUFFER,
    TERMINAL_RETENTION,
    RegistryConfig,
)
from .config import DEFAULT_HOST, DEFAULT_PORT, ServerSettings
from .envopts import ENV_PREFIX, apply_environment
from .history import DEFAULT_DB_FILENAME, HistoryError
from .producers import ChatModel, OpenAIChatModel, ScriptedModel, load_model
from .redis_runner import redact, require_coredis
from .runner import RunningServer, only_leaf, serve, shutdown_deadline

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["LOG_LEVELS", "build_model", "main", "parser", "serve_parser"]

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


_DESCRIPTION = (
    "trio-chatruns: resumable streaming of LLM chat runs for Trio. 'trio-chatruns serve' "
    "runs the chat server on embedded defaults (the scripted model, 127.0.0.1:8000)."
)
_SERVE_EPILOG = (
    f"Every option can also be set from an environment variable: {ENV_PREFIX} followed by "
    f"the option's name in upper case with '_' for '-' (--max-events 50 is "
    f"{ENV_PREFIX}MAX_EVENTS=50; flags take 1/0, true/false, yes/no, on/off). "
    "The command line wins over the environment. See docs/server.md."
)


def _version() -> str:
    try:
        return metadata.version("trio-chatruns")
    except metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


def serve_parser(root: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``serve`` subcommand's parser within ``root`` (made by :func:`parser`)."""
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]  # type: ignore[no-any-return]
    raise LookupError("no serve subcommand")  # pragma: no cover


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``trio-chatruns`` (plain-text help, no markup)."""
    root = argparse.ArgumentParser(prog="trio-chatruns", description=_DESCRIPTION)
    root.add_argument("--version", action="version", version=f"trio-chatruns {_version()}")
    commands = root.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "serve",
        help="run the chat server (HTTP API, SSE/WebSocket streams, browser page)",
        description="Run the chat server: HTTP API, SSE and WebSocket streams, browser page.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default=DEFAULT_HOST, help="interface to bind")
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free)")
    net.add_argument(
        "--graceful-timeout", type=float, default=5.0, help="seconds to drain on shutdown"
    )
    net.add_argument(
        "--send-timeout",
        type=float,
        default=30.0,
        help="seconds a write to a client may take before its connection is closed",
    )
    net.add_argument(
        "--backlog", type=int, default=2048, help="connections queued before they are accepted"
    )

    reg = p.add_argument_group("retention")
    reg.add_argument(
        "--retention",
        type=float,
        default=TERMINAL_RETENTION,
        help="seconds a finished run is kept for late reconnects",
    )
    reg.add_argument(
        "--max-retained",
        type=int,
        default=MAX_RETAINED_TERMINAL,
        help="finished runs kept at most (oldest evicted first)",
    )
    reg.add_argument(
        "--max-events",
        type=int,
        default=MAX_EVENTS_PER_RUN,
        help="frames buffered per run for replay",
    )
    reg.add_argument(
        "--subscriber-buffer",
        type=int,
        default=SUBSCRIBER_BUFFER,
        help="live frames queued per stream before it is dropped as lagging",
    )

    caps = p.add_argument_group("caps")
    caps.add_argument(
        "--max-active-runs", type=int, default=64, help="active runs at once (429 past it)"
    )
    caps.add_argument(
        "--max-subscribers", type=int, default=32, help="open streams per run (429 past it)"
    )
    caps.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="request body limit")
    caps.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds to receive a whole request body (408 past it)",
    )
    caps.add_argument(
        "--heartbeat",
        type=float,
        default=15.0,
        help='seconds of silence before a heartbeat (SSE \': ping\', WebSocket {"type": "ping"})',
    )
    caps.add_argument(
        "--sse-retry-ms",
        type=int,
        default=1000,
        help="reconnection delay sent to EventSource clients (SSE 'retry:'), milliseconds",
    )

    model = p.add_argument_group("model")
    model.add_argument(
        "--producer",
        default="scripted",
        help="'scripted' (embedded, no network), 'openai', or 'module:function' "
        "(imported with the current directory on sys.path)",
    )
    model.add_argument(
        "--model", default=None, help="model name for --producer openai (required there)"
    )
    model.add_argument(
        "--base-url", default="https://api.openai.com/v1", help="OpenAI-compatible API root (…/v1)"
    )
    model.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (unset: no auth header)",
    )
    model.add_argument(
        "--system-prompt", default=None, help="system message for the openai producer"
    )
    model.add_argument("--tokens-per-second", type=float, default=30.0, help="scripted model rate")
    hist = p.add_argument_group("history")
    hist.add_argument(
        "--db",
        default=DEFAULT_DB_FILENAME,
        help="SQLite file keeping conversation history (':memory:' keeps none); "
        "delete the file to wipe the history",
    )
    hist.add_argument(
        "--history-messages",
        type=int,
        default=20,
        help="earlier messages of the conversation sent to the model with a prompt "
        "(oldest dropped first; 0: none)",
    )
    hist.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="keep runs and conversation history in this Redis (redis://HOST:PORT/DB), "
        "shared by every worker started with the same URL; --db is then unused. Needs the "
        "[redis] extra. Default: in memory, one process",
    )
    hist.add_argument(
        "--redis-lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --redis: seconds a worker holds its runs without renewing; a dead "
        "worker's runs end 'failed' once it lapses (give every worker the same)",
    )
    model.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds the openai producer waits to connect, and for each read, before the "
        "run fails (the error names the endpoint and this option)",
    )
    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not log every request (logger trio_chatruns.access, INFO)",
    )
    ops.add_argument(
        "--expose-errors",
        action="store_true",
        help="send clients the whole text of a model's exception (otherwise they get its "
        "type and a summary, and the whole text goes to the log only)",
    )
    ops.add_argument(
        "--gc-defaults",
        action="store_true",
        help="keep Python's garbage collector settings (otherwise the objects alive at "
        "startup are frozen and young collections run less often)",
    )
    sec = p.add_argument_group("security (see docs/server.md, Security)")
    sec.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/... and /metrics; also read from "
        "TRIO_CHATRUNS_API_KEY (prefer it: other users can read a command line). Without one, "
        "a non-loopback --host gets a generated key, logged in the page URL",
    )
    sec.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept requests (and CORS reads) from this web origin, e.g. "
        "http://localhost:3000; repeatable",
    )
    sec.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="also answer for this Host: NAME (any port), NAME:PORT, or '*' for any "
        "(turns off the DNS-rebinding check); repeatable",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (case-insensitive)",
    )
    return root


def build_model(args: argparse.Namespace) -> ChatModel:
    """The chat model selected by ``--producer`` and its options.

    A ``module:function`` producer is imported with the current directory
    first on ``sys.path`` (inserted if missing).

    Raises:
        ValueError: an unknown producer, or a bad ``module:function``.
        ImportError: the named module cannot be imported.
    """
    if args.producer == "scripted":
        return ScriptedModel(tokens_per_second=args.tokens_per_second)
    if args.producer == "openai":
        if not args.model:
            raise ValueError("--producer openai needs --model NAME")
        return OpenAIChatModel(
            base_url=args.base_url,
            model=args.model,
            api_key=os.environ.get(args.api_key_env) or None,
            system_prompt=args.system_prompt,
            timeout=args.timeout,
        )
    if ":" in args.producer:
        # As uvicorn and hypercorn do for 'module:app': the console script's
        # sys.path[0] is its own bin/ directory, not where the user stands.
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        return load_model(args.producer)
    raise ValueError(f"unknown producer {args.producer!r}: use scripted, openai or module:function")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-chatruns``; returns the exit status."""
    root = parser()
    apply_environment(serve_parser(root), os.environ)
    args = root.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        model = build_model(args)
        settings = ServerSettings(
            host=args.host,
            port=args.port,
            max_body_bytes=args.max_body_bytes,
            max_active_runs=args.max_active_runs,
            max_subscribers_per_run=args.max_subscribers,
            heartbeat_interval=args.heartbeat,
            body_timeout=args.body_timeout,
            graceful_timeout=args.graceful_timeout,
            db=args.db,
            history_messages=args.history_messages,
            send_timeout=args.send_timeout,
            backlog=args.backlog,
            access_log=not args.no_access_log,
            expose_errors=args.expose_errors,
            api_key=args.api_key or os.environ.get("TRIO_CHATRUNS_API_KEY") or None,
            allowed_hosts=tuple(args.allowed_host),
            allowed_origins=tuple(args.allow_origin),
            sse_retry_ms=args.sse_retry_ms,
            redis=args.redis,
            redis_lease=args.redis_lease,
            tune_gc=not args.gc_defaults,
        )
        if settings.redis is not None:
            require_coredis()
        registry_config = RegistryConfig(
            max_events_per_run=args.max_events,
            terminal_retention=args.retention,
            max_retained_terminal=args.max_retained,
            subscriber_buffer=args.subscriber_buffer,
        )
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        print(f"trio-chatruns: error: {exc}", file=sys.stderr)
        return 2
    try:
        status = trio.run(_main, model, settings, registry_config)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        # Trio hands a nursery's errors on in (nested) exception groups.
        history_error = only_leaf(exc, HistoryError)
        if history_error is not None:
            print(f"trio-chatruns: error: {history_error}", file=sys.stderr)
            return 1
        unavailable = _redis_unavailable(exc)
        if unavailable is not None:
            print(
                f"trio-chatruns: error: cannot reach Redis at {_redacted(args.redis)}: "
                f"{unavailable}",
                file=sys.stderr,
            )
            return 1
        os_error = only_leaf(exc, OSError)
        if os_error is None:
            if only_leaf(exc, KeyboardInterrupt) is not None:
                return 130
            raise
        print(
            f"trio-chatruns: error: cannot serve on {args.host}:{args.port}: {os_error}",
            file=sys.stderr,
        )
        return 1
    return status


def _redis_unavailable(exc: BaseException) -> BaseException | None:
    """The ``RedisUnavailable`` that ended the server at start, if that is what did."""
    for leaf in _leaves(exc):
        if type(leaf).__name__ == "RedisUnavailable":
            return leaf
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for child in exc.exceptions for leaf in _leaves(child)]
    return [exc]


def _redacted(url: str | None) -> str:
    return redact(url or "")


def _fatal_status(exc: BaseException | None) -> int:
    """The exit status after a model raised ``exc`` (``None``: no such thing, 0)."""
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    return 130  # KeyboardInterrupt, as for a Ctrl+C


async def _main(model: ChatModel, settings: ServerSettings, registry_config: RegistryConfig) -> int:
    hard_exit: threading.Timer | None = None
    running: RunningServer | None = None
    try:
        async with trio.open_nursery() as nursery:

            async def run_server(*, task_status: trio.TaskStatus[RunningServer]) -> None:
                await serve(model, settings, registry_config, task_status=task_status)
                nursery.cancel_scope.cancel()

            running = await nursery.start(run_server)
            print(
                f"trio-chatruns: serving on {running.url} — open it in a browser; Ctrl+C stops",
                file=sys.stderr,
                flush=True,
            )
            history = running.server.history
            if history is not None and history.store.shared:
                print(
                    f"trio-chatruns: runs and conversation history in Redis at "
                    f"{history.store.path}",
                    file=sys.stderr,
                    flush=True,
                )
            elif history is not None:
                where = history.store.path
                print(
                    f"trio-chatruns: conversation history in {where} (delete the file to wipe it)"
                    if history.store.persistent
                    else "trio-chatruns: conversation history in memory (--db :memory:): "
                    "kept until the server stops",
                    file=sys.stderr,
                    flush=True,
                )
            await running.wait_shutdown_requested()
            # Trio cannot stop a producer that shields itself from cancellation:
            # past the deadline (serve() has logged which runs), end the process.
            delay = shutdown_deadline(settings) + 1.0
            hard_exit = threading.Timer(delay, _hard_exit, args=(delay,))
            hard_exit.daemon = True
            hard_exit.start()
    finally:
        if hard_exit is not None:
            hard_exit.cancel()
    return _fatal_status(running.server.fatal_exception if running is not None else None)


def _hard_exit(delay: float) -> None:
    print(
        f"trio-chatruns: error: shutdown did not finish within {delay:.1f} s "
        "(a producer ignores cancellation); exiting",
        file=sys.stderr,
        flush=True,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
