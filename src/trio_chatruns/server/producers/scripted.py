"""The embedded default model: a deterministic script, no network, no weights.

It streams a reply token by token at a fixed rate and walks through every
active status on the way, so a client (or a test) sees the whole protocol:

1. ``running`` — the first third of the reply;
2. ``waiting_approval`` with ``current_tool="search"`` — the tool call waits
   for approval (auto-approved after a pause);
3. ``running`` with ``current_tool="search"`` — the call runs: ``tool_call``
   then ``tool_result`` frames, then ``current_tool`` is cleared;
4. the second third; ``waiting_hitl`` — a pause as if asking the user;
5. the rest, then ``done`` with status ``completed``.

A prompt starting with ``/fail`` makes the run end ``failed`` halfway, to show
that path. Interrupts work at every pause: the model only waits in
``trio.sleep``, and lets the cancellation through.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import attrs
import trio
from attrs import validators as v

from ... import ChatRunStatus

if TYPE_CHECKING:
    from trio_chatruns import ChatRun

    from .base import ChatRequest

__all__ = ["ScriptedModel", "scripted_reply"]

_WORDS = (
    "trio", "nursery", "cancel", "scope", "channel", "stream", "replay", "buffer",
    "cursor", "frame", "resume", "token", "reply", "run", "server", "client",
    "checkpoint", "deadline", "event", "sequence", "subscriber", "registry",
    "structured", "concurrency", "gracefully", "bounded", "memory", "retention",
)  # fmt: skip


def scripted_reply(prompt: str, n_tokens: int = 90) -> list[str]:
    """Return the reply tokens :class:`ScriptedModel` streams for ``prompt``.

    Deterministic (a SHA-256 of the prompt picks the words), so tests can
    compare the text a client assembled with ``"".join(scripted_reply(p))``.
    Each token is a word followed by a space or punctuation; the first echoes
    the prompt's length so different prompts differ from the first token.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    tokens = [f"[{len(prompt)} chars] "]
    for i in range(1, n_tokens):
        byte = digest[i % len(digest)] ^ (i * 37 & 0xFF)
        word = _WORDS[byte % len(_WORDS)]
        if i == 1:
            word = word.capitalize()
        sep = ". " if i % 12 == 11 else " "
        tokens.append(word + (sep if i < n_tokens - 1 else "."))
    return tokens


@attrs.frozen(kw_only=True)
class ScriptedModel:
    """A deterministic chat model for demos and tests.

    Attributes:
        tokens_per_second (float): streaming rate; default 30.
        reply_tokens (int): tokens per reply (frames of type ``token``).
        pause_tokens (int): length of each approval/human pause, in token
            intervals.
    """

    tokens_per_second: float = attrs.field(
        default=30.0, validator=[v.instance_of((int, float)), v.gt(0)]
    )
    reply_tokens: int = attrs.field(default=90, validator=[v.instance_of(int), v.ge(3)])
    pause_tokens: int = attrs.field(default=6, validator=[v.instance_of(int), v.ge(0)])

    @property
    def description(self) -> str:
        """``scripted (<rate> tokens/s, no network)``, for the startup log."""
        return f"scripted ({self.tokens_per_second:g} tokens/s, no network)"

    async def __call__(self, run: ChatRun, request: ChatRequest) -> None:
        """Stream the scripted reply to ``request`` into ``run``.

        Raises:
            RunTerminated: the run was ended by someone else meanwhile.
        """
        interval = 1.0 / self.tokens_per_second
        pause = interval * self.pause_tokens
        tokens = scripted_reply(request.prompt, self.reply_tokens)
        third = len(tokens) // 3

        def status(s: ChatRunStatus, tool: str | None) -> None:
            run.push_frame(
                {"type": "status", "status": s.value, "current_tool": tool},
                status=s,
                current_tool=tool,
            )

        async def stream(part: list[str]) -> None:
            for token in part:
                await trio.sleep(interval)
                run.push_frame({"type": "token", "text": token})

        status(ChatRunStatus.RUNNING, None)
        await stream(tokens[:third])
        if request.prompt.startswith("/fail"):
            message = "scripted failure requested by the prompt"
            run.push_frame(
                {"type": "error", "message": message}, status=ChatRunStatus.FAILED, error=message
            )
            return

        call_id = f"call_{run.run_id[-8:]}"
        arguments = {"query": request.prompt[:80]}
        status(ChatRunStatus.WAITING_APPROVAL, "search")
        await trio.sleep(pause)
        status(ChatRunStatus.RUNNING, "search")
        run.push_frame(
            {"type": "tool_call", "id": call_id, "name": "search", "arguments": arguments}
        )
        await trio.sleep(pause)
        run.push_frame(
            {"type": "tool_result", "id": call_id, "name": "search", "content": f"{third} results"},
            current_tool=None,
        )
        await stream(tokens[third : 2 * third])
        status(ChatRunStatus.WAITING_HITL, None)
        await trio.sleep(pause)
        status(ChatRunStatus.RUNNING, None)
        await stream(tokens[2 * third :])
        run.push_frame({"type": "done", "finish_reason": "stop"}, status=ChatRunStatus.COMPLETED)
