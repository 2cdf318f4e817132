"""`python -m banditd` and the `banditd` command (pyproject's console script).

It imports next to nothing before it blocks SIGINT and SIGTERM for `serve` and `gateway`:
importing the commands takes about a second, and a stop meanwhile (a rollout that changes its
mind, a Ctrl-C) would otherwise kill the process with no drain and a traceback. Blocked, the
signal waits until banditd.edge.lifecycle has its handlers in place and unblocks it, which then
ends the start-up (``stopped_while_starting``, exit 0), as a stop at any later point of it does.
"""

import signal
import sys

STOPS = (signal.SIGINT, signal.SIGTERM)
SERVING_COMMANDS = ("serve", "gateway")  # commands that run banditd.edge.lifecycle


def main() -> int:
    if sys.argv[1:2] and sys.argv[1] in SERVING_COMMANDS:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    from banditd.commands.cli import main as command

    return command()


if __name__ == "__main__":
    raise SystemExit(main())
