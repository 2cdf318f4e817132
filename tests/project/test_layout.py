"""The package layout (issue 19, docs/architecture.md): a few shared modules at the top, the rest
in packages named for their part. The import contracts themselves run in .ci/check."""

from __future__ import annotations

import tomllib
from pathlib import Path

import banditd

PACKAGE = Path(banditd.__file__).parent
MAX_TOP_LEVEL_MODULES = 8


def test_few_modules_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"banditd/*.py: {top}; place new modules in a part"


def test_the_layers_contract_names_packages_that_exist() -> None:
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    names = [name.strip() for layer in layers for name in layer.split(":")]
    assert len(names) >= 8
    for name in names:
        path = PACKAGE.parent.joinpath(*name.split("."))
        assert (path / "__init__.py").is_file(), f"{name} in the layers contract is no package"
