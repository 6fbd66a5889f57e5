"""The key layout in Redis: every key of one conversation shares the hash tag
``{conversation_id}``, so on Redis Cluster they live in one slot and one Lua
script may touch all of them.

With the default prefix ``trio_chatruns``:

- ``trio_chatruns:{<cid>}:run``: a hash, the conversation's current run
  (its record, owner worker and lease);
- ``trio_chatruns:{<cid>}:queue``: a list, the ids of its queued runs in start
  order; ``trio_chatruns:{<cid>}:q:<run_id>``: a hash, a queued run (or, for
  a few seconds, a run that ended while not current);
- ``trio_chatruns:{<cid>}:frames:<run_id>``: a stream, the run's replay
  buffer; entry id ``<seq>-0`` is the frame with that seq, ``<seq>-1`` (seq of
  the last frame) marks the end of the run;
- ``trio_chatruns:terminal``: a sorted set of ended runs (score: end time in
  ms, member ``<run_id><cid>``), the cluster-wide retention index;
  ``{trio_chatruns:terminal}:bytes``: a hash, the bytes of its members and
  their sum (with a byte budget); the hash tag puts it in the index's slot;
- channel ``trio_chatruns:interrupt:<worker_id>``: messages to the worker
  about the runs it owns, ``<kind><run_id><cid>`` (kind ``i`` interrupt,
  ``s`` started, ``c``/``f`` ended cancelled/failed elsewhere).
"""

from __future__ import annotations

import attrs

__all__ = ["RUN_ID_LENGTH", "KeyLayout"]

RUN_ID_LENGTH = 32
"""A run id is 32 hex digits, so ``<run_id><cid>`` splits without a separator."""


@attrs.frozen
class KeyLayout:
    """Builds key names under one ``prefix`` (a non-empty ``str``)."""

    prefix: str

    def run(self, conversation_id: str) -> str:
        """The hash holding the conversation's current run."""
        return f"{self.prefix}:{{{conversation_id}}}:run"

    def conversation(self, conversation_id: str) -> str:
        """The prefix of every key of the conversation (scripts append
        ``run``, ``queue``, ``q:<run_id>``, ``frames:<run_id>``)."""
        return f"{self.prefix}:{{{conversation_id}}}:"

    def queue(self, conversation_id: str) -> str:
        """The list of the conversation's queued run ids, oldest first."""
        return f"{self.prefix}:{{{conversation_id}}}:queue"

    def frames_prefix(self, conversation_id: str) -> str:
        """The stream keys of the conversation's runs, without the run id
        (scripts append the id of the run they find in the hash)."""
        return f"{self.prefix}:{{{conversation_id}}}:frames:"

    def frames(self, conversation_id: str, run_id: str) -> str:
        """The stream holding one run's frames."""
        return self.frames_prefix(conversation_id) + run_id

    @property
    def terminal(self) -> str:
        """The cluster-wide sorted set of ended runs (retention index)."""
        return f"{self.prefix}:terminal"

    @property
    def terminal_bytes(self) -> str:
        """The hash of the retention index's members' bytes (same slot)."""
        return f"{{{self.prefix}:terminal}}:bytes"

    @property
    def channel_prefix(self) -> str:
        """The workers' pub/sub channels without the worker id."""
        return f"{self.prefix}:interrupt:"

    @property
    def run_pattern(self) -> str:
        """A ``SCAN MATCH`` pattern for every run hash under this prefix."""
        return f"{self.prefix}:{{*}}:run"

    def interrupt_channel(self, worker_id: str) -> str:
        """The pub/sub channel a worker listens on for interrupts of its runs."""
        return self.channel_prefix + worker_id

    @staticmethod
    def terminal_member(conversation_id: str, run_id: str) -> str:
        return run_id + conversation_id

    @staticmethod
    def split_member(member: str) -> tuple[str, str]:
        """``(conversation_id, run_id)`` of a retention index member."""
        return member[RUN_ID_LENGTH:], member[:RUN_ID_LENGTH]
