"""The state file of `banditd ingest`: how far the runs before got, and in which file.

One JSON object, written after each chunk commits:

- ``lines``: the data lines done (committed, or refused as unparsable);
- ``sha256``: of the text of those lines, so a file replaced under the same name (a daily
  export) is refused rather than resumed into, which would skip lines it never sent;
- ``rejects`` and ``rejects_bytes``: the rejects file and its size at that mark, so a resumed
  run first drops what a chunk that never committed wrote there.

An older banditd wrote the count alone: it is still read, with a warning (``Mark.sha256`` None).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from banditd.errors import InvalidArgument


@dataclass(frozen=True)
class Mark:
    lines: int = 0
    sha256: str | None = None  # None: a bare count, written by an older banditd
    rejects: str | None = None
    rejects_bytes: int | None = None


def read(path: Path) -> Mark:
    """The mark of the runs before; InvalidArgument for a file that is not a state file."""
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if not text or text.isdecimal():
        print(
            f"banditd: warning: {path} holds a count of lines alone (an older banditd): it "
            "cannot tell whether the file is still the one it counted, so the first "
            f"{int(text or 0)} lines are skipped unchecked; --restart sends it all again",
            file=sys.stderr,
        )
        return Mark(lines=int(text or 0))
    try:
        data: Any = json.loads(text)
        mark = Mark(**data)
        valid = isinstance(mark.lines, int) and isinstance(mark.sha256, str)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise InvalidArgument(
            "",
            f"{path}: not a state file of banditd ingest (the lines done and their sha256, got "
            f"{text[:40]!r}); --restart ignores it",
        )
    return mark


def write(path: Path, mark: Mark) -> None:
    """Replace the state file whole (a run cut off while writing it leaves the old one)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(asdict(mark)) + "\n", encoding="utf-8")
    os.replace(part, path)


def check(path: Path, state_path: Path, mark: Mark, lines: int, sha256: str) -> None:
    """Refuse a file whose first ``mark.lines`` lines (``lines`` read, hashing to ``sha256``)
    are not the ones the state file says were sent."""
    if mark.sha256 is not None and (lines, sha256) != (mark.lines, mark.sha256):
        raise InvalidArgument(
            "",
            f"{path} does not start with the {mark.lines} lines that {state_path} says were "
            "sent (a new file under the same name?): nothing sent. --restart sends it from the "
            "first line (lines sent before count as duplicate), or delete the state file",
        )


def open_rejects(path: Path, mark: Mark) -> IO[str]:
    """The rejects file, written from scratch for a run from the start, else cut back to the
    state's mark (dropping the rejects of a chunk that never committed) and appended to."""
    if mark.lines == 0:
        return path.open("w", encoding="utf-8")
    out = path.open("a", encoding="utf-8")
    cut = mark.rejects_bytes if mark.rejects == str(path.resolve()) else None
    if cut is not None and out.tell() > cut:
        out.truncate(cut)
        out.seek(cut)
    return out
