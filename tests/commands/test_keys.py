"""`banditd keys create/list/revoke`: the secret is shown once and never stored."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from banditd.commands.cli import main
from banditd.edge import keys


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points structlog at this test's captured stdout: undo it for later tests."""
    yield
    structlog.reset_defaults()


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keys", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "keys.db"
    url = ["--database-url", f"sqlite+aiosqlite:///{db}"]
    code, out, err = _run(capsys, "create", "--tenant", "acme", "--role", "select", *url)
    assert code == 0 and "not shown again" in err
    plain = out.strip()
    key_id, secret = keys.split_key(plain)
    code, out, _ = _run(
        capsys, "create", "--tenant", "*", "--role", "admin", "--role", "feedback",
        "--name", "ops", "--json", *url,
    )  # fmt: skip
    created = json.loads(out)
    assert created["roles"] == ["admin", "feedback"] and created["tenant"] == "*"
    assert created["key"].startswith(f"bdk_{created['key_id']}_")
    code, out, _ = _run(capsys, "list", "--json", *url)
    listed = json.loads(out)
    assert [k["key_id"] for k in listed] == [key_id, created["key_id"]]
    assert secret not in out and "key" not in listed[0]
    stored = sqlite3.connect(db).execute("select secret_sha256 from api_keys").fetchall()
    assert bytes(stored[0][0]) == keys.secret_hash(secret)  # only the hash is kept
    assert secret.encode() not in db.read_bytes()
    code, out, _ = _run(capsys, "list", "--tenant", "acme", *url)
    assert code == 0 and key_id in out and created["key_id"] not in out and "active" in out
    code, out, _ = _run(capsys, "revoke", plain, "--json", *url)  # the whole key works too
    assert code == 0 and json.loads(out)["revoked"] is True
    code, out, _ = _run(capsys, "list", "--json", *url)
    assert [k["revoked"] for k in json.loads(out)] == [True, False]
    code, _, err = _run(capsys, "revoke", "0123456789abcdef", *url)
    assert code == 1 and "no API key" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "a b", "--role", "admin"], "tenant"),
        (["--tenant", "acme", "--role", "admin", "--name", "x" * 200], "name"),
        # A control character in a name faked lines (or terminal output) in `keys list`.
        (["--tenant", "acme", "--role", "select", "--name", "ci\nbdk  *  admin  active"], "name"),
        (["--tenant", "acme", "--role", "select", "--name", "tab\there"], "name"),
        (["--tenant", "acme", "--role", "select", "--name", "\x1b[2Jclear"], "name"),
        (["--tenant", "acme", "--role", "select", "--name", "line\u2028break"], "name"),
    ],
)
def test_bad_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    url = ["--database-url", f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"]
    code, _, err = _run(capsys, "create", *args, *url)
    assert code == 1 and message in err


def test_unknown_role_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["keys", "create", "--tenant", "acme", "--role", "root"])
    assert done.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_name_from_before_the_check_is_listed_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--database-url", f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"]
    _run(capsys, "create", "--tenant", "acme", "--role", "select", *url)
    db = sqlite3.connect(tmp_path / "k.db")
    db.execute("update api_keys set name = ?", ("ci\nfake  *  admin  active",))
    db.commit()
    code, out, _ = _run(capsys, "list", *url)
    assert (
        code == 0 and out.count("\n") == 1 and out.rstrip().endswith("ci\\nfake  *  admin  active")
    )
    code, out, _ = _run(capsys, "list", "--json", *url)
    assert json.loads(out)[0]["name"] == "ci\nfake  *  admin  active"  # JSON escapes it already


def test_revoking_a_revoked_key_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # It printed "revoked <id>" again, as if this call had revoked it.
    url = ["--database-url", f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"]
    _, out, _ = _run(capsys, "create", "--tenant", "acme", "--role", "select", "--json", *url)
    key_id = json.loads(out)["key_id"]
    code, out, err = _run(capsys, "revoke", key_id, "--json", *url)
    first = json.loads(out)
    assert code == 0 and first["revoked"] is True and first["already_revoked"] is False
    code, _, err = _run(capsys, "revoke", key_id, *url)
    assert code == 0 and f"{key_id} was already revoked" in err
    code, out, _ = _run(capsys, "revoke", key_id, "--json", *url)
    again = json.loads(out)
    assert code == 0 and again["already_revoked"] is True
    assert again["revoked_at"] == first["revoked_at"]  # the first revocation's time stands


def test_listing_an_empty_tenant_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --tenant '' listed every tenant's keys, as if --tenant had been left out.
    url = ["--database-url", f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"]
    _run(capsys, "create", "--tenant", "acme", "--role", "select", *url)
    code, out, err = _run(capsys, "list", "--tenant", "", *url)
    assert code == 1 and out == "" and "tenant: must not be empty" in err
    code, out, _ = _run(capsys, "list", "--tenant", "globex", "--json", *url)
    assert code == 0 and json.loads(out) == []
