"""A stop signal for CPU-bound work run in a thread (``Admin.evaluate``'s off-policy evaluation).

A thread cannot be cancelled from outside: when the call that awaits it is cancelled (its
client's deadline passed, or the client cancelled), the coroutine sets the work's ``Stop``, and
the work's long loops call ``check`` between chunks, which raises ``Abandoned`` once it is set.
The thread then ends soon after its call, instead of keeping a core busy for minutes.
"""

from __future__ import annotations

import threading

from banditd.errors import Abandoned


class Stop:
    """Set by the caller that gave up on the work; checked by the work between its chunks."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reached: dict[str, int] = {}  # {stage}_done and {stage}_total, by stage

    def set(self) -> None:
        self._event.set()

    def check(self, stage: str, done: int, total: int) -> None:
        """Note that ``stage`` has done ``done`` of ``total``; raise ``Abandoned`` if set."""
        self._reached[f"{stage}_done"], self._reached[f"{stage}_total"] = done, total
        if self._event.is_set():
            where = ", ".join(f"{k}={v}" for k, v in self._reached.items())
            raise Abandoned(f"stopped as its caller gave up ({where})", dict(self._reached))


NEVER = Stop()  # the default: work that nobody stops (the CLI's, a test's)
