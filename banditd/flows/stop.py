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
        self._stages: dict[str, tuple[int, int]] = {}  # done and total, by stage, in order

    def set(self) -> None:
        self._event.set()

    def check(self, stage: str, done: int, total: int) -> None:
        """Note that ``stage`` has done ``done`` of ``total``, and forget the stages checked
        after it (they were of its previous round: the candidate before); raise ``Abandoned``
        if set."""
        stages = self._stages  # replaced, never changed in place: NEVER is shared by threads
        names = list(stages)
        kept = names[: names.index(stage)] if stage in stages else names
        self._stages = {name: stages[name] for name in kept} | {stage: (done, total)}
        if self._event.is_set():
            reached = {
                f"{name}_{what}": count
                for name, counts in self._stages.items()
                for what, count in zip(("done", "total"), counts, strict=True)
            }
            where = ", ".join(f"{k}={v}" for k, v in reached.items())
            raise Abandoned(f"stopped as its caller gave up ({where})", reached)


NEVER = Stop()  # the default: work that nobody stops (the CLI's, a test's)
