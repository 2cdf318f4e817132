"""Turning a request into the context vector x the policy scores."""

from banditd.context.builder import build_x, input_tokens_estimate
from banditd.context.hashing import HashingEncoder

__all__ = ["HashingEncoder", "build_x", "input_tokens_estimate"]
