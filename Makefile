# The two quick-start commands are `make run` and `make test`; each sets up .venv on first use.
# Every install comes from requirements.lock (pinned by `make lock`), so a fresh machine gets what
# CI got.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# The lock pins torch's CPU build (torch==...+cpu), which PyPI does not serve: PyTorch's CPU index
# does (deploy/Dockerfile's TORCH_INDEX). Empty by default, for a pip whose mirror carries it (an
# index it cannot reach costs seconds a package); elsewhere:
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
EXTRA_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: run test check proto lock clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$$(grep -E '^pip==' $(LOCK) || echo pip)"
	$(BIN)/pip install --quiet $(EXTRA_INDEX) -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	./.ci/install-helm >/dev/null || echo "make: Helm is not installed (see above), so the Helm tests" \
	  "will be skipped (CI=true: fail); set BANDITD_HELM to a Helm 3 binary" >&2
	touch $(STAMP)

## run: start banditd on the embedded SQLite default with the example router demo/chat
run: $(STAMP)
	$(BIN)/banditd serve --example-router

## test: lint, types, generated-code drift, then the whole test suite (SQLite, Postgres, helm)
##       in TEST_WORKERS processes (pytest-xdist; each test file stays in one); 1 runs them in one
TEST_WORKERS ?= 2
test: $(STAMP)
	./.ci/check
	$(BIN)/pytest -rs --durations=15 $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

## check: lint, format, types and generated-code drift only
check: $(STAMP)
	./.ci/check

## proto: regenerate banditd/v1 from proto/ with the locked grpcio-tools
proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	  proto/banditd/v1/banditd.proto

## lock: re-resolve requirements.lock from pyproject.toml, keeping existing pins where they still
##       fit (UPGRADE=1 moves every pin to the newest release); commit both files together
lock:
	test -x $(BIN)/pip-compile || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet pip-tools; }
	$(BIN)/pip-compile --quiet $(if $(UPGRADE),--upgrade) --extra dev --extra context --strip-extras \
	  --allow-unsafe --no-emit-index-url --no-emit-find-links $(EXTRA_INDEX) -o $(LOCK) pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
