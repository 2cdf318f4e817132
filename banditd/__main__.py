"""`python -m banditd`: the `banditd` command."""

from banditd.commands.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
