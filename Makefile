# The two quick-start commands are `make run` and `make test`; each sets up .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,context]'
	touch $(STAMP)

## run: start banditd on the embedded SQLite default with the example router demo/chat
run: $(STAMP)
	$(BIN)/banditd serve --example-router

## test: lint, types, generated-code drift, then the whole test suite (SQLite and Postgres)
test: $(STAMP)
	./.ci/check
	$(BIN)/pytest

## check: lint, format, types and generated-code drift only
check: $(STAMP)
	./.ci/check

## proto: regenerate banditd/v1 from proto/
proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	  proto/banditd/v1/banditd.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
