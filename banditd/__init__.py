"""banditd: an online contextual-bandit router for LLM traffic."""

__version__ = "0.1.0"
