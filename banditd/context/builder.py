"""Assemble x = [1, embedding] from a prompt (encoded here) or a caller's embedding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from banditd.context.hashing import HashingEncoder
from banditd.domain import FloatArray, RouterSpec
from banditd.errors import FailedPrecondition, InvalidArgument

CHARS_PER_TOKEN = 4.0


def check_prompt(prompt: str, max_prompt_chars: int) -> None:
    if not prompt.strip():
        raise InvalidArgument("prompt", "must not be empty")
    if len(prompt) > max_prompt_chars:
        raise InvalidArgument(
            "prompt",
            f"{len(prompt)} characters is over the limit of {max_prompt_chars} "
            "(BANDITD_MAX_PROMPT_CHARS)",
        )
    try:
        prompt.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: no encoder's tokenizer takes it
        raise InvalidArgument(
            "prompt", f"is not valid Unicode: {exc.object[exc.start]!r} at {exc.start}"
        ) from exc


def check_embedding(spec: RouterSpec, embedding: Sequence[float]) -> FloatArray:
    if len(embedding) != spec.embedding_dim:
        raise InvalidArgument(
            "embedding.values",
            f"router {spec.name!r} expects {spec.embedding_dim} values, got {len(embedding)}",
        )
    vec = np.asarray(embedding, dtype=np.float64)
    if not np.isfinite(vec).all():
        raise InvalidArgument("embedding.values", "must all be finite (no NaN or inf)")
    with np.errstate(over="ignore"):  # an overflow is inf here, refused below
        x32 = vec.astype(np.float32)
    # x holds float32: refused here, whatever the router's PCA phase (pending, x's embedding
    # part is zeros and would take it; fitted, its projection would not).
    if not np.isfinite(x32).all():
        raise InvalidArgument("embedding.values", "values overflow float32")
    return vec


def build_x(
    spec: RouterSpec,
    *,
    prompt: str | None,
    embedding: Sequence[float] | None,
    max_prompt_chars: int,
) -> FloatArray:
    """Context vector, shape (spec.dim,), float64 whose values are exact float32.

    Rounding through float32 keeps x identical after it travels in a decision token.
    The hashing encoder's x without request metadata or kNN outcomes (those parts are zero);
    routers with another encoder or a PCA build x through banditd.context.pipeline.
    """
    if spec.encoder != "hashing" or spec.pca_dim:
        raise FailedPrecondition(
            f"router {spec.name!r} uses encoder {spec.encoder!r}"
            f"{' with PCA' if spec.pca_dim else ''}: build x with its context pipeline"
        )
    if prompt is not None:
        check_prompt(prompt, max_prompt_chars)
        vec = HashingEncoder(spec.embedding_dim).encode(prompt)
    elif embedding is not None:
        vec = check_embedding(spec, embedding)
    else:
        raise InvalidArgument("context", "set either prompt or embedding")
    x = np.zeros(spec.dim, dtype=np.float64)
    x[0] = 1.0
    x[1 : 1 + spec.embedding_dim] = vec
    x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        raise InvalidArgument("embedding.values", "values overflow float32")
    return x32.astype(np.float64)


def input_tokens_estimate(prompt: str | None) -> float | None:
    """Rough token count of a prompt (4 characters a token); None without a prompt."""
    if prompt is None:
        return None
    return max(1.0, len(prompt) / CHARS_PER_TOKEN)
