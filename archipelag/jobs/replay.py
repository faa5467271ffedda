"""Replay: a retried attempt checked against what the job's stream already carried. Pure.

A job whose host is lost runs again elsewhere; a chat runs with the same seed, so the new host says the same
tokens again. Every consumer must see one continuous stream, so the relay passes each event of the new attempt
through a ``Replay``: text and progress the stream already carried are swallowed, what is new passes, and an
attempt that says something else than what was sent is a divergence (the job then fails rather than
garbling what the user has). The new attempt's status events are swallowed too until it says something new:
then a stream resumed from a checkpoint after a restart numbers its events as the lost one did, and a client
resuming by ``Last-Event-ID`` lands where it left off.
"""

from __future__ import annotations

from collections.abc import Sequence

from archipelag.protocol import Event


class Diverged(Exception):
    """The retried attempt said something else than what the stream already carried."""


class Replay:
    def __init__(self, published: Sequence[Event]) -> None:
        self._text = "".join(e["content"] for e in published if e["type"] == "token")
        self._pos = 0  # how much of the text the new attempt has said again
        self._steps = max((int(e["step"]) for e in published if e["type"] == "progress"), default=0)
        self._fresh = False  # the attempt has said something the stream had not carried

    @property
    def caught_up(self) -> bool:
        return self._pos >= len(self._text)

    def filter(self, event: Event) -> Event | None:
        """The event to publish (possibly shortened), or None when the stream already carried it."""
        kind = event["type"]
        if kind == "status":
            return event if self._fresh else None
        if kind == "token":
            kept = self._token(event)
        elif kind == "progress":
            kept = event if int(event["step"]) > self._steps else None
        elif kind == "done" and not self.caught_up:
            raise Diverged(f"the retry ended after {self._pos} of the {len(self._text)} characters already sent")
        else:
            kept = event
        self._fresh = self._fresh or kept is not None
        return kept

    def _token(self, event: Event) -> Event | None:
        content: str = event["content"]
        if self.caught_up:
            return event
        expected = self._text[self._pos:self._pos + len(content)]
        if not content.startswith(expected):
            raise Diverged(f"the retry said {content!r} where the stream had {expected!r}")
        self._pos += len(expected)
        rest = content[len(expected):]
        return {**event, "content": rest} if rest else None
