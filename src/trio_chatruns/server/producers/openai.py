"""A real model: any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Streams with ``"stream": true`` over httpx (which runs on Trio through anyio)
and turns the server-sent chunks into frames:

- ``choices[0].delta.content`` → ``token`` frames;
- ``choices[0].delta.tool_calls`` → ``tool_call_delta`` frames, with
  ``current_tool`` set to the function's name; when the choice finishes, one
  ``tool_call`` frame per call with the assembled arguments, and
  ``current_tool`` cleared;
- ``data: [DONE]`` → a ``done`` frame, status ``completed``.

Anything the endpoint gets wrong — a non-2xx status, an ``error`` object in
the stream, malformed JSON, a chunk whose fields have the wrong shape (e.g.
``choices`` not a list, ``delta.content`` not a string, a tool call
``index`` not an integer), a transport error, a timeout (``timeout``, the
CLI's ``--timeout``), a stream that stops before ``[DONE]`` — raises
:class:`EndpointError`, a :class:`~..failures.ModelFailure` whose message
names the endpoint's host, the status or problem, and a short reason; the
server then ends the run ``failed`` with an ``error`` frame carrying that
message. Only the choice with ``index`` 0 is followed. Cancellation (an
interrupt, a shutdown) closes the HTTP stream and propagates.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

import attrs
import trio
from attrs import validators as v

from ... import ChatRunStatus
from ..failures import ModelFailure

if TYPE_CHECKING:
    from trio_chatruns import ChatRun

    from .base import ChatRequest

__all__ = ["EndpointError", "OpenAIChatModel"]

_MALFORMED = "endpoint_malformed"


class EndpointError(ModelFailure):
    """The chat-completions endpoint failed or answered with something unusable.

    Its message is written for clients: the endpoint's host, the HTTP status
    or what went wrong, and a short reason (never the API key, the request,
    or a whole response body). ``kind`` is one of the ``endpoint_*`` keys of
    :data:`~..failures.FAILURE_KINDS`.
    """


@attrs.frozen(kw_only=True)
class OpenAIChatModel:
    """Streams replies from an OpenAI-compatible chat-completions endpoint.

    Attributes:
        base_url (str): the API root, e.g. ``https://api.openai.com/v1`` or
            ``http://127.0.0.1:11434/v1``; ``/chat/completions`` is appended.
        model (str): the model name sent in the request.
        api_key (str | None): sent as ``Authorization: Bearer``; ``None`` sends
            no header (local servers).
        system_prompt (str | None): an optional system message.
        timeout (float): seconds allowed to connect, and to wait for each
            read (``--timeout``); a failure names it.
        extra_body (dict): more request fields (``temperature``, ``tools``...).
    """

    base_url: str = attrs.field(validator=v.instance_of(str))
    model: str = attrs.field(validator=v.instance_of(str))
    api_key: str | None = attrs.field(default=None, repr=False)
    system_prompt: str | None = None
    timeout: float = attrs.field(default=60.0, validator=[v.instance_of((int, float)), v.gt(0)])
    extra_body: dict[str, Any] = attrs.field(factory=dict)

    @property
    def description(self) -> str:
        """``openai model '<model>' at <base_url> (timeout <t> s)``, for the startup log."""
        parts = urllib.parse.urlsplit(self.base_url)
        where = parts._replace(netloc=self.host).geturl()  # no credentials in the log
        return f"openai model {self.model!r} at {where} (timeout {self.timeout:g} s)"

    @property
    def host(self) -> str:
        """The endpoint's ``host[:port]`` as named in error messages (no credentials)."""
        parts = urllib.parse.urlsplit(self.base_url)
        host = parts.hostname or self.base_url
        return f"{host}:{parts.port}" if parts.port else host

    @property
    def url(self) -> str:
        """The full ``.../chat/completions`` URL requested."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        messages: list[dict[str, str]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        return {**self.extra_body, "model": self.model, "messages": messages, "stream": True}

    async def __call__(self, run: ChatRun, request: ChatRequest) -> None:
        """Stream the endpoint's reply into ``run``; see the module docstring."""
        import httpx

        host = self.host
        try:
            await self._stream(httpx, run, request)
        except EndpointError as exc:
            raise EndpointError(f"{host} {exc.message}", kind=exc.kind) from exc
        except httpx.TimeoutException as exc:
            t = f"{self.timeout:g} s"
            if isinstance(exc, httpx.ConnectTimeout):
                message = (
                    f"{host} did not accept a connection within {t} (connect timeout, --timeout)"
                )
            elif isinstance(exc, httpx.ReadTimeout):
                message = f"{host} sent nothing for {t} (read timeout, --timeout)"
            else:
                message = f"{host} timed out after {t} ({type(exc).__name__}, --timeout)"
            raise EndpointError(message, kind="endpoint_timeout") from exc
        except httpx.ConnectError as exc:
            reason = (str(exc) or type(exc).__name__)[:120]
            raise EndpointError(
                f"cannot connect to {host} ({reason})", kind="endpoint_unreachable"
            ) from exc
        except httpx.HTTPError as exc:
            raise EndpointError(
                f"connection to {host} failed ({type(exc).__name__})", kind="endpoint_transport"
            ) from exc

    async def _stream(self, httpx: Any, run: ChatRun, request: ChatRequest) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        calls: dict[int, dict[str, Any]] = {}
        finish_reason: str | None = None
        run.push_frame(
            {"type": "status", "status": "running", "current_tool": None},
            status=ChatRunStatus.RUNNING,
        )
        async with (
            httpx.AsyncClient(timeout=self.timeout) as client,
            client.stream(
                "POST", self.url, json=self.request_body(request), headers=headers
            ) as response,
        ):
            if response.status_code >= 400:
                body = (await response.aread()).decode("utf-8", "replace")
                raise EndpointError(
                    f"answered HTTP {response.status_code}: {_error_text(body)[:200]}",
                    kind="endpoint_status",
                )
            # Leave the stream by cancelling this scope, never by break/return/raise
            # inside the loop: the Cancelled then runs through httpx's chain of
            # async generators and finishes each one, instead of leaving them to
            # the garbage collector (a ResourceWarning under Trio).
            error: EndpointError | None = None
            done = False
            with trio.CancelScope() as reading:
                async for line in response.aiter_lines():
                    if done or error is not None or not line.startswith("data:"):
                        continue  # after the end; blank separators, comments, other fields
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        reading.cancel()
                        continue
                    try:
                        finish_reason = (
                            self._handle_chunk(run, _parse_chunk(payload), calls) or finish_reason
                        )
                    except EndpointError as exc:
                        error = exc
                        reading.cancel()
        if error is not None:
            raise error
        if not done:
            raise EndpointError("closed the stream before [DONE]", kind="endpoint_incomplete")
        self._finish_calls(run, calls)
        run.push_frame(
            {"type": "done", "finish_reason": finish_reason or "stop"},
            status=ChatRunStatus.COMPLETED,
            current_tool=None,
        )

    def _handle_chunk(
        self, run: ChatRun, chunk: dict[str, Any], calls: dict[int, dict[str, Any]]
    ) -> str | None:
        """Push the frames of one parsed chunk; return its ``finish_reason``.

        Only the choice with ``index`` 0 is followed (a choice without an
        ``index`` counts as 0). Every field read is checked first.

        Raises:
            EndpointError: a field of the wrong shape.
        """
        choice = _first_choice(chunk)
        if choice is None:
            return None  # e.g. a final usage-only chunk, or another choice
        delta = _field(choice, "delta", dict, "choices[0]") or {}
        content = _field(delta, "content", str, "choices[0].delta")
        tool_calls = _field(delta, "tool_calls", list, "choices[0].delta")
        reason: str | None = _field(choice, "finish_reason", str, "choices[0]")
        if content:
            run.push_frame({"type": "token", "text": content})
        for i, call_delta in enumerate(tool_calls or []):
            where = f"choices[0].delta.tool_calls[{i}]"
            if not isinstance(call_delta, dict):
                raise EndpointError(
                    f"sent a malformed chunk: {where} is not an object", kind=_MALFORMED
                )
            index = _field(call_delta, "index", int, where)
            index = 0 if index is None else index
            if index < 0:
                raise EndpointError(
                    f"sent a malformed chunk: {where}.index is negative", kind=_MALFORMED
                )
            call_id = _field(call_delta, "id", str, where)
            function = _field(call_delta, "function", dict, where) or {}
            new_name = _field(function, "name", str, where + ".function")
            arguments_delta = _field(function, "arguments", str, where + ".function") or ""
            call = calls.setdefault(index, {"id": None, "name": None, "arguments": ""})
            if call_id:
                call["id"] = call_id
            if new_name:
                call["name"] = new_name
            call["arguments"] += arguments_delta
            frame = {
                "type": "tool_call_delta",
                "index": index,
                "id": call["id"],
                "name": call["name"],
                "arguments_delta": arguments_delta,
            }
            if new_name:
                run.push_frame(frame, current_tool=new_name)
            else:
                run.push_frame(frame)
        if reason:
            self._finish_calls(run, calls)
        return reason

    @staticmethod
    def _finish_calls(run: ChatRun, calls: dict[int, dict[str, Any]]) -> None:
        for index in sorted(calls):
            call = calls[index]
            try:
                arguments: Any = json.loads(call["arguments"]) if call["arguments"] else {}
            except ValueError:
                arguments = call["arguments"]  # keep what the model produced
            run.push_frame(
                {
                    "type": "tool_call",
                    "id": call["id"],
                    "name": call["name"],
                    "arguments": arguments,
                },
                current_tool=None,
            )
        calls.clear()


def _parse_chunk(payload: str) -> dict[str, Any]:
    """Decode one ``data:`` payload; an ``error`` object raises.

    Raises:
        EndpointError: malformed JSON, not an object, or an error object.
    """
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise EndpointError(
            f"sent a malformed chunk (not JSON): {payload[:60]!r}", kind=_MALFORMED
        ) from None
    if not isinstance(chunk, dict):
        raise EndpointError(
            f"sent a chunk that is not an object: {payload[:60]!r}", kind=_MALFORMED
        )
    if chunk.get("error"):
        raise EndpointError(f"reported an error: {_error_text(chunk)[:200]}", kind="endpoint_error")
    return chunk


def _first_choice(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The choice with ``index`` 0 (or no ``index``), ``None`` if there is none.

    Raises:
        EndpointError: ``choices`` is not a list of objects, or an ``index`` is
            not an integer.
    """
    choices = _field(chunk, "choices", list, "chunk") or []
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise EndpointError(
                f"sent a malformed chunk: choices[{i}] is not an object", kind=_MALFORMED
            )
        index = _field(choice, "index", int, f"choices[{i}]")
        if index is None or index == 0:
            return choice
    return None


_JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``obj[key]`` if it is a ``kind`` (``bool`` is not an ``int``), ``None`` if absent or null.

    Raises:
        EndpointError: present with another type.
    """
    value = obj.get(key)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise EndpointError(
        f"sent a malformed chunk: {where}.{key} is not {_JSON_TYPE_NAMES[kind]}: "
        f"{json.dumps(value)[:60]}",
        kind=_MALFORMED,
    )


def _error_text(body: Any) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body, trimmed."""
    data = body
    if isinstance(body, str):
        try:
            data = json.loads(body)
        except ValueError:
            return body.strip()[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return json.dumps(data)[:500]
