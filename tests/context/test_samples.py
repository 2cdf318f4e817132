"""The PCA's samples (banditd.context.samples): float32 rows in one array sized once, read in
place by the fit, which comes out as a fit on the float64 embeddings does."""

from __future__ import annotations

import faiss
import numpy as np

from banditd.context.encoders import HashingTextEncoder
from banditd.context.metadata import MemoryVocabularyStore
from banditd.context.pipeline import ContextPipeline
from banditd.context.reduction import Reduction
from banditd.domain import ArmSpec, FloatArray, RouterSpec

DIM, PCA_DIM, N = 16, 4, 60


def _pipeline() -> ContextPipeline:
    spec = RouterSpec(
        tenant="t",
        name="r",
        arms=(ArmSpec("a", 0.0, 0.0), ArmSpec("b", 0.0, 0.0)),
        embedding_dim=DIM,
        pca_dim=PCA_DIM,
        pca_fit_samples=N,
    )
    return ContextPipeline(spec, HashingTextEncoder(DIM), MemoryVocabularyStore())


def _components(reduction: Reduction) -> FloatArray:
    return faiss.vector_to_array(reduction.pca.A).reshape(PCA_DIM, DIM).astype(np.float64)


def test_samples_are_kept_as_float32_in_one_buffer_and_fit_the_same_pca() -> None:
    embeddings = np.random.default_rng(7).normal(size=(N, DIM)) * np.linspace(1, 4, DIM)
    pipeline = _pipeline()
    for raw in embeddings[:-1]:
        assert not pipeline.assemble(raw, {})[1 : 1 + PCA_DIM].any()  # pending
    # float32, N rows made once: a quarter of what the float64 rows and their stack took
    assert pipeline.samples.nbytes == N * DIM * 4
    assert pipeline.samples.rows().dtype == np.float32
    assert np.shares_memory(pipeline.samples.rows(), pipeline.samples.rows())
    pipeline.assemble(embeddings[-1], {})  # the last sample: fitted at once (offline)
    assert pipeline.reduction is not None and pipeline.samples.nbytes == 0
    expected = Reduction.fit(embeddings, PCA_DIM)  # the float64 embeddings, as before
    np.testing.assert_allclose(_components(pipeline.reduction), _components(expected), atol=1e-6)
    np.testing.assert_allclose(
        pipeline.reduction.apply(embeddings[:5]), expected.apply(embeddings[:5]), atol=1e-5
    )


def test_an_embedding_past_float32_range_is_not_a_sample() -> None:
    """Its float32 row is inf: fitted on, it made the PCA NaN, and every later Select of the
    router was refused (x not finite)."""
    embeddings = np.random.default_rng(8).normal(size=(N, DIM))
    huge = embeddings[0] * 1e39  # finite as float64, so a Select takes it
    pipeline = _pipeline()
    pipeline.assemble(huge, {})
    for raw in embeddings:
        pipeline.assemble(raw, {})
    assert pipeline.reduction is not None
    assert np.isfinite(_components(pipeline.reduction)).all()
    expected = Reduction.fit(embeddings, PCA_DIM)
    np.testing.assert_allclose(_components(pipeline.reduction), _components(expected), atol=1e-6)
    assert np.isfinite(pipeline.assemble(embeddings[0], {})).all()


def test_a_fork_copies_the_samples_kept_so_far() -> None:
    embeddings = np.random.default_rng(9).normal(size=(3, DIM))
    pipeline = _pipeline()
    for raw in embeddings[:2]:
        pipeline.assemble(raw, {})
    twin = pipeline.fork()
    twin.assemble(embeddings[2], {})
    assert len(pipeline.samples) == 2 and len(twin.samples) == 3
    np.testing.assert_array_equal(twin.samples.rows(), embeddings.astype(np.float32))
    np.testing.assert_array_equal(pipeline.samples.rows(), embeddings[:2].astype(np.float32))
