"""Producers and small utilities shared by the tests, and ``trio-chatruns
serve`` as a child process (:func:`serve_process`)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_chatruns import ChatRun, ChatRunRegistry, ChatRunStatus


async def park(run: ChatRun) -> None:
    """A producer that pushes nothing and waits until cancelled."""
    await trio.sleep_forever()


async def finish_at_once(run: ChatRun) -> None:
    """A producer that returns immediately (the run ends COMPLETED)."""


def make_ticker(count: int, interval: float = 1.0):
    """A producer pushing ``{"n": i}`` for i in 1..count, one per ``interval`` s."""

    async def ticker(run: ChatRun) -> None:
        for n in range(1, count + 1):
            run.push_frame({"n": n})
            await trio.sleep(interval)

    return ticker


def finished_run(registry: ChatRunRegistry, conversation_id: str, frames: int = 1) -> ChatRun:
    """Start a run, push ``frames`` frames through its handle and complete it,
    all synchronously (the producer task never gets to run)."""
    run = registry.try_start(conversation_id, park)
    for n in range(1, frames + 1):
        status = ChatRunStatus.COMPLETED if n == frames else None
        run.push_frame({"n": n}, status=status)
    if frames == 0:
        run.update(ChatRunStatus.COMPLETED)
    return run


async def wait_until(condition, *, poll: float = 0.005) -> None:
    """Wait until ``condition()`` is true: for a state nothing signals (a counter,
    a log record, another process). Fails with ``trio.TooSlowError`` after 10
    seconds; the poll interval paces the check, it is not a wait for the event
    to have happened."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the state
            await trio.sleep(poll)


# -- `trio-chatruns serve` as a child process ----------------------------------

SCRIPT = Path(sys.executable).with_name("trio-chatruns")
"""The console script installed next to the running Python."""


class HeldModel:
    """``inner``'s replies, the first ``holds`` of them kept open until :meth:`release`.

    Every frame but the last (the one that completes the run) goes out at the
    model's pace; the last waits for the test. So a reply stays mid-stream
    (its run active, its streams open) for as long as the test cuts,
    reconnects and reloads, however slowly a loaded machine runs the browser:
    the test waits for the page, never races the model's clock.
    """

    def __init__(self, inner: Any, holds: int) -> None:
        self.inner = inner
        self.holds = holds
        self._release = trio.Event()

    @property
    def description(self) -> str:
        return self.inner.description

    def release(self) -> None:
        """Let the reply being held complete."""
        self._release.set()

    async def __call__(self, run: Any, request: Any) -> None:
        if self.holds <= 0:
            await self.inner(run, request)
            return
        self.holds -= 1
        last: list[tuple[Any, dict[str, Any]]] = []

        class KeepsTheLastFrame:
            def __getattr__(self, name: str) -> Any:
                return getattr(run, name)

            def push_frame(self, frame: Any, **changes: Any) -> Any:
                if changes.get("status") is ChatRunStatus.COMPLETED:
                    last.append((frame, changes))
                    return None
                return run.push_frame(frame, **changes)

        await self.inner(KeepsTheLastFrame(), request)
        await self._released()
        for frame, changes in last:
            run.push_frame(frame, **changes)

    async def _released(self) -> None:
        await self._release.wait()
        self._release = trio.Event()


class FileHeldModel(HeldModel):
    """:class:`HeldModel` for a server in a child process (``--producer``): a
    held reply completes once the file ``release_file`` exists, and the model
    that takes it deletes it (one file, one reply). :func:`held_producer_module`
    writes the module that builds one."""

    def __init__(self, inner: Any, holds: int, release_file: str | os.PathLike[str]) -> None:
        super().__init__(inner, holds)
        self.release_file = Path(release_file)

    async def _released(self) -> None:
        # Another process creates the file: no trio.Event reaches across, so
        # the wait polls for the event itself (never a fixed sleep). Taking
        # it is the unlink: of two workers that see it, one gets it.
        while True:
            try:
                self.release_file.unlink()
                return
            except FileNotFoundError:
                await trio.sleep(0.02)


def held_producer_module(
    directory: Path, holds: int, tokens_per_second: float
) -> Callable[[], None]:
    """Write ``held_replies.py`` in ``directory`` (a child server's cwd): its
    ``model`` is the scripted model at ``tokens_per_second``, its first
    ``holds`` replies held (``--producer held_replies:model``; a
    :class:`FileHeldModel`). Returns the function that releases the reply
    being held, in whichever child holds it (a release with none held lets
    the next one through at once)."""
    release_file = directory / "release-held-reply"
    (directory / "held_replies.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from helpers import FileHeldModel\n"
        "from trio_chatruns.server.producers import ScriptedModel\n"
        f"model = FileHeldModel(ScriptedModel(tokens_per_second={tokens_per_second!r}), "
        f"{holds!r}, {str(release_file)!r})\n"
    )
    return release_file.touch


async def start_serving(
    nursery: trio.Nursery, model: Any, settings: Any, registry_config: Any = None
) -> tuple[Any, trio.Event]:
    """Start :func:`trio_chatruns.server.serve` in ``nursery`` (``handle_signals=False``).

    Returns the ``RunningServer`` and an event set once ``serve`` has
    returned (or raised): a test that shuts the server down waits on it.
    """
    from trio_chatruns.server import serve

    done = trio.Event()

    async def run(task_status: trio.TaskStatus[Any]) -> None:
        try:
            await serve(
                model, settings, registry_config, handle_signals=False, task_status=task_status
            )
        finally:
            done.set()

    return await nursery.start(run), done


class RecordingSink:
    """A :class:`trio_chatruns.server.streams.StreamSink` that records what
    ``pump`` gives it: each message as a tuple (``("event", seq)``,
    ``("gap", first, last)``, ``("ping",)``, ``("end", reason)``,
    ``("lagged", resume_after, run_id)``), each write in ``sent`` as
    ``(messages, final)``; a write takes one scheduling round, as a socket
    write does. ``coalesce`` is the SSE sink's (gathering on)."""

    coalesce = True

    def __init__(self) -> None:
        self.sent: list[tuple[list[Any], bool]] = []

    @property
    def batches(self) -> list[list[Any]]:
        """The messages of each write, in order."""
        return [messages for messages, _ in self.sent]

    def event(self, event: Any) -> tuple[Any, ...]:
        return ("event", event.seq)

    def gap(self, first: int, last: int, run_id: str) -> tuple[Any, ...]:
        return ("gap", first, last)

    def ping(self) -> tuple[Any, ...]:
        return ("ping",)

    def end(self, record: Any, reason: str) -> tuple[Any, ...]:
        return ("end", reason)

    def lagged(self, resume_after: int, run_id: str) -> tuple[Any, ...]:
        return ("lagged", resume_after, run_id)

    async def send(self, messages: list[Any], *, final: bool) -> None:
        self.sent.append((list(messages), final))
        await trio.lowlevel.checkpoint()


class ServeProcess:
    """A running ``trio-chatruns serve`` child process (see :func:`serve_process`).

    Its stderr is read all along by a task of its own (so the child never
    blocks on a full pipe) and kept: :attr:`text` is everything it printed so
    far, :meth:`wait_for_output` waits for a line to appear. :attr:`url` is
    the address from its ``serving on URL`` line.
    """

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.url = ""
        self.output = bytearray()
        self._grew = trio.Event()
        self._eof = trio.Event()
        self._terminated = False

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def _drain(self) -> None:
        assert self.process.stderr is not None
        try:
            while chunk := await self.process.stderr.receive_some():
                self.output += chunk
                self._grew.set()
                self._grew = trio.Event()
        finally:
            self._eof.set()
            self._grew.set()

    async def wait_for_output(self, text: str, seconds: float = 15.0) -> re.Match[str]:
        """Wait until the child has printed ``text`` on stderr (fails if it exits first)."""
        return await self.wait_for_match(re.escape(text), seconds)

    async def wait_for_match(self, pattern: str, seconds: float = 15.0) -> re.Match[str]:
        """Wait until the regular expression ``pattern`` matches its stderr; the match."""
        with trio.move_on_after(seconds):
            while (match := re.search(pattern, self.text)) is None:
                if self._eof.is_set():
                    raise AssertionError(f"exited before printing {pattern!r}:\n{self.text}")
                await self._grew.wait()
            return match
        raise AssertionError(f"printed no {pattern!r} within {seconds:g} s:\n{self.text}")

    async def all_output(self, seconds: float = 15.0) -> str:
        """Everything the child printed, once it has closed its stderr (exited)."""
        with trio.fail_after(seconds):
            await self._eof.wait()
        return self.text

    async def stop(self, seconds: float = 15.0) -> int:
        """SIGTERM, then its exit status once it has exited and its stderr is read."""
        self.terminate()
        with trio.fail_after(seconds):
            code = await self.process.wait()
        await self.all_output(seconds)
        return code

    def terminate(self) -> None:
        """Send SIGTERM (a graceful shutdown) once, if it is still running; do
        not wait. (A second SIGTERM would stop it at once.)"""
        if self.process.returncode is None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        self.process.kill()
        await self.process.wait()


async def stop_all(children: list[ServeProcess], seconds: float = 15.0) -> list[int]:
    """Stop several at once (SIGTERM to each, then wait); their exit statuses."""
    for child in children:
        child.terminate()
    return [await child.stop(seconds) for child in children]


@contextlib.asynccontextmanager
async def serve_process(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    seconds: float = 30.0,
) -> AsyncIterator[ServeProcess]:
    """Run ``trio-chatruns serve --port 0 ARGS...`` (in ``cwd``, with ``env``
    added to the environment) until the block ends; yield it once it has
    printed its ``serving on URL`` line. The block may stop it (:meth:`stop`,
    :meth:`kill`); one still running at the end is killed. Skips the test
    when the console script is not installed next to Python."""
    async with serve_processes(1, *args, cwd=cwd, env=env, seconds=seconds) as (child,):
        yield child


@contextlib.asynccontextmanager
async def serve_processes(
    count: int,
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    seconds: float = 30.0,
) -> AsyncIterator[list[ServeProcess]]:
    """:func:`serve_process` for ``count`` workers with the same arguments,
    started at once, each on a port of its own; yields them once every one
    of them is serving."""
    if not SCRIPT.exists():
        pytest.skip("the trio-chatruns console script is not installed next to python")
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": "", **(env or {})}
    children: list[ServeProcess] = []
    try:
        async with trio.open_nursery() as nursery:
            try:
                for _ in range(count):
                    process = await trio.lowlevel.open_process(
                        [str(SCRIPT), "serve", "--port", "0", *args],
                        cwd=cwd,
                        stderr=subprocess.PIPE,
                        env=environment,
                    )
                    children.append(ServeProcess(process))
                    nursery.start_soon(children[-1]._drain)
                for child in children:  # they start in parallel; any order will do
                    match = await child.wait_for_match(r"serving on (\S+)\s", seconds)
                    child.url = match[1]
                yield children
            finally:
                with trio.CancelScope(shield=True):
                    for child in children:
                        if child.process.returncode is None:
                            await child.kill()
    finally:
        for child in children:
            assert child.process.stderr is not None
            await child.process.stderr.aclose()
