"""The context pipeline: a request (prompt | embedding, metadata) -> the context vector x.

One object per router (RouterState.context), called once per Select, the same code in replay
and warm start. Layout of x, shape (spec.dim,):

    [ 1 | embedding part (reduced_dim) | metadata one-hot (metadata_dim) | kNN (knn_dim) ]

- embedding part: the router's text encoder's vector of the prompt (its last
  ``text_window_tokens`` tokens when set), or the caller's embedding (which must have
  ``embedding_dim`` finite values), projected by the router's PCA when ``pca_dim`` > 0
  (zeros until the PCA is fitted: by a server off the request path, see ``fit_due``;
  banditd.context.reduction);
- metadata: banditd.context.metadata;
- kNN: banditd.context.knn, searched with the embedding part.

Values are rounded through float32 so x is identical after it travels in a decision token.
``version`` names the featurisation (encoder, window, PCA fingerprint, metadata, k) and is
logged with each decision.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from banditd.context.batching import MicroBatcher
from banditd.context.builder import check_embedding, check_prompt
from banditd.context.encoders import TextEncoder
from banditd.context.metadata import MetadataFeatures, VocabularyStore
from banditd.context.samples import PcaSamples
from banditd.domain import FeedbackEvent, FloatArray, RouterSpec
from banditd.domain.ceilings import event_problem
from banditd.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:  # faiss (the context extra) is imported only by routers that use PCA or kNN
    from banditd.context.knn import OutcomeIndex
    from banditd.context.reduction import Reduction


def faiss_modules() -> None:
    """Fail clearly when a router needs faiss and it is not installed."""
    try:
        import faiss  # noqa: F401
    except ImportError as exc:
        raise FailedPrecondition(
            "pca_dim and knn_k need faiss: pip install 'banditd[context]' (or [gpu])"
        ) from exc


# A light encoder (minilm-static: ~0.05 ms a short prompt) runs on the event loop for prompts up
# to this size; longer ones go to its worker thread like every call of a heavy one.
INLINE_MAX_CHARS = 4000
_BIAS = np.ones(1)  # x's first value
_BIAS.flags.writeable = False


def encoder_weights(spec: RouterSpec, encoder: TextEncoder) -> str:
    """The router's encoder and the weights it runs: ``{encoder}[@fingerprint]``, the first part
    of the context version and of the PCA fingerprint."""
    return f"{spec.encoder}@{encoder.fingerprint}" if encoder.fingerprint else spec.encoder


def pca_fingerprint(spec: RouterSpec, encoder: TextEncoder) -> str:
    """What a router's PCA depends on; a PCA stored under another fingerprint is not reused."""
    return (
        f"pca:{encoder_weights(spec, encoder)}:{spec.embedding_dim}:w{spec.text_window_tokens}"
        f":{spec.pca_dim}:n{spec.pca_fit_samples}"
    )


class ContextPipeline:
    def __init__(
        self,
        spec: RouterSpec,
        encoder: TextEncoder,
        vocabulary: VocabularyStore,
        *,
        known_vocabulary: Mapping[str, Mapping[str, int]] | None = None,
        reduction: Reduction | None = None,
        batcher: MicroBatcher | None = None,
        max_prompt_chars: int = 200_000,
        context_since: int = 0,
    ) -> None:
        self.spec = spec
        self.context_since = context_since  # events decided before this router version: not x
        self.encoder = encoder
        self.batcher = batcher
        self.max_prompt_chars = max_prompt_chars
        self.metadata = MetadataFeatures(spec, vocabulary, known_vocabulary)
        self.reduction = reduction
        self.samples = PcaSamples(spec.pca_fit_samples)  # embeddings kept to fit the PCA
        self.unsaved_reduction = False  # fitted here, not stored yet
        # Serving: called (from the request, no await) once the PCA's samples are in; the owner
        # fits and sets it off the request path. None (offline): reduce fits it at once.
        self.fit_due: Callable[[ContextPipeline], None] | None = None
        self.knn: OutcomeIndex | None = None
        self._version: tuple[object, object, object, str] = (None, None, None, "")  # last one
        if spec.knn_k or spec.pca_dim:
            faiss_modules()
        if spec.knn_k:
            from banditd.context.knn import OutcomeIndex

            self.knn = OutcomeIndex(spec.reduced_dim, [a.name for a in spec.arms], spec.knn_k)

    @property
    def version(self) -> str:
        """The featurisation's name, kept while the spec, encoder and PCA it names are the
        same objects (read on every Select)."""
        spec, encoder, reduction, version = self._version
        if spec is self.spec and encoder is self.encoder and reduction is self.reduction:
            return version
        version = self._versioned()
        self._version = (self.spec, self.encoder, self.reduction, version)
        return version

    def _versioned(self) -> str:
        s = self.spec
        pca = "none"
        if s.pca_dim:
            pca = (
                "pending"
                if self.reduction is None
                else hashlib.blake2b(self.reduction.to_bytes(), digest_size=4).hexdigest()
            )
        return (
            f"{self.weights}:{s.embedding_dim}:w{s.text_window_tokens}:pca{s.pca_dim}/{pca}"
            f":m{len(s.metadata_keys)}x{s.metadata_slots}:k{s.knn_k}"
        )

    def builds_x_as(self, spec: RouterSpec, encoder: TextEncoder, context_since: int) -> bool:
        """Whether the router changed to ``spec`` (its encoder ``encoder``, building x as now
        since version ``context_since``) builds x exactly as this pipeline does: then what this
        one learnt (vocabulary, PCA and its samples, kNN index) is the new version's too."""
        return (
            not self.spec.changes_x(spec)
            and encoder_weights(spec, encoder) == self.weights
            and context_since == self.context_since
        )

    @property
    def weights(self) -> str:
        """The encoder weights x is built with (``encoder_weights``): events whose x others
        built are not folded (FeedbackEvent.built_with)."""
        return encoder_weights(self.spec, self.encoder)

    @property
    def needs_reduction(self) -> bool:
        return bool(self.spec.pca_dim) and self.reduction is None

    # -- embedding ------------------------------------------------------------------------------

    def embed(self, prompts: Sequence[str]) -> FloatArray:
        """Raw embeddings of prompts in this thread, shape (n, embedding_dim)."""
        for prompt in prompts:
            check_prompt(prompt, self.max_prompt_chars)
        return self.encoder.encode_batch(prompts, self.spec.text_window_tokens)

    # -- x --------------------------------------------------------------------------------------

    def reduce(self, raw: FloatArray) -> FloatArray:
        """The embedding part of x, shape (reduced_dim,), fitting the PCA once enough raw
        embeddings were seen."""
        if not self.spec.pca_dim:
            return raw
        if self.reduction is None:
            self.samples.add(raw)
            if not self.samples.full:
                return np.zeros(self.spec.pca_dim)
            if self.fit_due is not None:  # x stays pending until the fitted PCA is set
                self.fit_due(self)
                return np.zeros(self.spec.pca_dim)
            from banditd.context.reduction import Reduction

            self.set_reduction(Reduction.fit(self.samples.rows(), self.spec.pca_dim))
            self.unsaved_reduction = True
        assert self.reduction is not None
        return np.asarray(self.reduction.apply(raw[None])[0], dtype=np.float64)

    def set_reduction(self, reduction: Reduction) -> None:
        self.reduction, self.samples = reduction, PcaSamples(0)

    def assemble(self, raw: FloatArray, metadata: Mapping[str, str]) -> FloatArray:
        """x of a raw embedding (shape (embedding_dim,)) and request metadata, shape (spec.dim,),
        float64 holding float32 values: the one way x is built (Select through ``build``,
        replay and warm start directly). Metadata values are placed by an in-memory vocabulary
        here; a stored one places them first (``build``)."""
        spec = self.spec
        self.metadata.resolve_now(metadata)
        part = self.reduce(raw)
        pieces = [_BIAS, part, self.metadata.features(metadata)]
        if self.knn is not None:
            pieces.append(self.knn.features(part.astype(np.float32).astype(np.float64)))
        x32 = np.concatenate(pieces, dtype=np.float32)  # each value rounded once, as astype
        if x32.shape != (spec.dim,):  # pragma: no cover - a layout bug, not a request error
            raise AssertionError(f"x has shape {x32.shape}, expected ({spec.dim},)")
        if not np.isfinite(x32).all():
            raise InvalidArgument("embedding.values", "values overflow float32")
        return x32.astype(np.float64)

    async def build(
        self,
        *,
        prompt: str | None,
        embedding: Sequence[float] | None,
        metadata: Mapping[str, str],
    ) -> FloatArray:
        """x of one request (Select): ``assemble`` of its raw embedding, a slow encoder's in a
        thread (micro-batched with concurrent requests), once the store has placed its
        metadata values."""
        if prompt is not None:
            long = self.encoder.heavy or len(prompt) > INLINE_MAX_CHARS
            if self.batcher is not None and long:
                check_prompt(prompt, self.max_prompt_chars)
                raw = await self.batcher.encode(prompt, self.spec.text_window_tokens)
            else:
                raw = np.asarray(self.embed([prompt])[0], dtype=np.float64)
        elif embedding is not None:
            raw = check_embedding(self.spec, embedding)
        else:
            raise InvalidArgument("context", "set either prompt or embedding")
        await self.metadata.resolve(metadata)
        return self.assemble(raw, metadata)

    def fork(self) -> ContextPipeline:
        """A pipeline with this one's encoder and a copy of its learnt state (vocabulary, PCA,
        samples, kNN index): replay runs each seed from the same start."""
        twin = copy.copy(self)
        twin.metadata = copy.deepcopy(self.metadata)
        twin.samples = self.samples.copy()
        twin.knn = copy.deepcopy(self.knn) if self.knn is not None else None
        twin.fit_due = None  # offline: a twin fits its own PCA, at once
        return twin

    # -- outcomes -------------------------------------------------------------------------------

    def embedding_part(self, x: FloatArray) -> FloatArray:
        return x[1 : 1 + self.spec.reduced_dim]

    def observe(self, event: FeedbackEvent) -> None:
        """Fold an applied feedback event into the kNN index (events in id order; a default
        reward, a decision's later signal, or x of another layout, decided before the router's
        context last changed or built by other encoder weights, is no outcome: the index holds
        each decision's first answer)."""
        knn = self.knn
        if knn is None or event.event_id <= knn.last_event_id:
            return
        knn.last_event_id = event.event_id
        if event.defaulted or event.signal or event.x.shape != (self.spec.dim,):
            return
        if not event.decided_since(self.context_since) or not event.built_with(self.weights):
            return
        if event_problem(event) is not None:
            return  # an absurd number (logged before issue 17): the posterior skips it too
        knn.add(self.embedding_part(event.x), event.arm, event.reward)
