"""The documentation: a short README, relative links that resolve, every setting documented, and
every `banditd` command, flag, BANDITD_* variable and banditd_* metric it names exists."""

from __future__ import annotations

import contextlib
import functools
import io
import re
from pathlib import Path

import pytest

from banditd.commands.cli import main
from banditd.config import Settings
from tests.helpers import REPO
from tests.project.test_deploy_gateway import _exported_metrics

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.MULTILINE)


def _prose(path: Path) -> str:
    """The page without code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text()))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        for heading in HEADING.findall(FENCE.sub("", path.read_text()))
    }


def test_readme_is_short() -> None:
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_every_setting_is_documented() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    missing = [
        f"BANDITD_{name.upper()}"
        for name in Settings.model_fields
        if f"`BANDITD_{name.upper()}`" not in page
    ]
    assert not missing, f"docs/configuration.md does not list {missing}"


# `banditd WORD...` where WORD is a subcommand: the words up to a pipe, quote or end of line.
COMMAND = re.compile(r"(?<![\w/.-])banditd((?:[ \t]+(?:\\\n\s*)?[^\s`|;&)'\"]+)+)")
FLAG = re.compile(r"^--[a-z][a-z0-9-]*$")
# Read from the environment outside Settings: by the package, the load test, the tests and CI.
OTHER_VARIABLES = {"BANDITD_API_KEY", "BANDITD_STATIC_ENCODER_DIR", "BANDITD_HELM"}
OTHER_PREFIXES = ("BANDITD_LOAD", "BANDITD_TOOLS_DIR")  # BANDITD_LOAD_*: load/locustfile.py


@functools.cache
def _help(*command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*command, "--help"])
    return out.getvalue()


def _subcommands(help_text: str) -> list[str]:
    found = re.search(r"\{([\w,-]+)\}", help_text)
    return found.group(1).split(",") if found else []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_and_flags_exist(page: Path) -> None:
    """After `banditd SUB [SUB]`, each --flag is one that command's --help lists."""
    unknown = []
    for found in COMMAND.finditer(page.read_text()):
        words = found.group(1).replace("\\\n", " ").split()
        command: list[str] = []
        while words and words[0] in _subcommands(_help(*command)):
            command.append(words.pop(0))
        if not command:
            continue  # prose: "banditd picks one ..."
        known = _help(*command)
        for word in words:
            flag = word.split("=")[0]
            if FLAG.match(flag) and not re.search(rf"(?<![\w-]){flag}(?![\w-])", known):
                unknown.append(f"banditd {' '.join(command)} {flag}")
    assert not unknown, f"{page.relative_to(REPO)}: {sorted(set(unknown))}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_variables_and_metrics_exist(page: Path) -> None:
    text = page.read_text()
    settings = {f"BANDITD_{name.upper()}" for name in Settings.model_fields}
    unknown = [
        name
        for name in set(re.findall(r"BANDITD_[A-Z0-9_]*[A-Z0-9]", text))
        if name not in settings | OTHER_VARIABLES
        and not name.startswith(OTHER_PREFIXES)
        and name != "BANDITD_NAME"  # configuration.md: the pattern itself
    ]
    exported = _exported_metrics()
    for name in set(re.findall(r"\bbanditd_[a-z0-9_]*[a-z0-9]\b", text)):
        if name.startswith("banditd_pb2"):
            continue  # the generated modules
        families = {name, f"{name}_total", f"{name}_count"}
        if not families & exported:
            unknown.append(name)
    assert not unknown, f"{page.relative_to(REPO)} names what banditd has not: {sorted(unknown)}"
