"""banditd: an online contextual-bandit router for LLM traffic."""

from importlib import metadata

try:
    __version__ = metadata.version("banditd")  # pyproject.toml's, as installed
except metadata.PackageNotFoundError:  # a source tree run without installing it
    __version__ = "0+unknown"
