#!/usr/bin/env bash
# The GPU path, on a machine with an NVIDIA GPU (issue 23, docs/gpu.md): install the gpu extra
# into a fresh venv, run the GPU tests, then print kNN and MiniLM encoding throughput, GPU against
# CPU (`banditd bench gpu`; arguments go to it, e.g. --sizes 100000,1000000).
# Not part of CI (.ci/run has no GPU). Needs python3.11, the NVIDIA driver, and PyPI (or
# PIP_INDEX_URL / PIP_FIND_LINKS with the wheels: torch 2.13.0's CUDA build, faiss-gpu-cu12).
#   bash bench/gpu_check.sh                  # venv in $VENV (default /tmp/banditd-gpu-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-${TMPDIR:-/tmp}/banditd-gpu-venv}

echo "== GPU"
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: run this on a machine with an NVIDIA GPU" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== installing the gpu extra into $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# requirements.lock pins the CPU builds (torch 2.13.0+cpu, faiss-cpu): keep every other pin, so
# torch 2.13.0 comes from PyPI with its CUDA libraries and FAISS as faiss-gpu-cu12.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
grep -vE '^(torch|faiss-cpu)==' requirements.lock >"$constraints"
"$VENV/bin/pip" install --quiet --constraint "$constraints" -e '.[gpu]' \
  pytest pytest-asyncio pytest-timeout pytest-postgresql 'psycopg[binary]' port-for
"$VENV/bin/python" -c 'import faiss, torch
print(f"faiss {faiss.__version__}: {faiss.get_num_gpus()} GPU(s); torch {torch.__version__}"
      f" (CUDA build {torch.version.cuda}): CUDA available {torch.cuda.is_available()}")
assert faiss.get_num_gpus() > 0, "faiss sees no GPU (driver? faiss-cpu installed as well?)"
assert torch.version.cuda, "a CPU build of torch was picked: a find-links or extra index with +cpu wheels (pip config list)?"
assert torch.cuda.is_available(), "torch sees no GPU (driver too old for its CUDA?)"'
echo "== tests (tests/context/test_gpu.py, and the context tests with indexes on the GPU)"
"$VENV/bin/python" -m pytest -rs -q tests/context/test_gpu.py tests/context/test_device.py \
  tests/context/test_context.py tests/context/test_context_encoders.py
echo "== banditd bench gpu $*"
"$VENV/bin/banditd" bench gpu "$@"
