"""Chat models: what produces a run's frames.

A *chat model* is an async callable ``model(run, request) -> None``: it reads
the :class:`ChatRequest`, pushes frames through ``run`` (a
:class:`trio_chatruns.ChatRun`) and returns when the reply is complete. The
server wraps it into the one-argument producer the registry runs.

Included: :class:`ScriptedModel` (the embedded default: deterministic, no
network) and :class:`OpenAIChatModel` (any OpenAI-compatible streaming
endpoint). :func:`load_model` resolves a ``module:function`` spec to your own.
"""

from .base import ChatModel, ChatRequest, describe_model, load_model, make_producer
from .openai import OpenAIChatModel
from .scripted import ScriptedModel, scripted_reply

__all__ = [
    "ChatModel",
    "ChatRequest",
    "OpenAIChatModel",
    "ScriptedModel",
    "describe_model",
    "load_model",
    "make_producer",
    "scripted_reply",
]
