"""Routers files: every RouterConfig key readable, bad files refused with file, router and field,
and what dump writes reads back to the same routers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from banditd.commands import routers_file
from banditd.commands.routers_file import RoutersFileError
from banditd.domain import ArmSpec, RouterSpec, ShadowSpec
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import REPO

ARM = "{name: a, input_price_per_mtok: 1, output_price_per_mtok: 2}"

# Every key away from its default (and an arm, a shadow with each of its keys).
EVERYTHING = RouterSpec(
    tenant="acme",
    name="support",
    arms=(
        ArmSpec("small", 0.1, 0.4),
        ArmSpec(
            "big",
            3.0,
            15.0,
            disabled=True,
            prior_latency_ms=900.0,
            input_energy_wh_per_mtok=0.5,
            output_energy_wh_per_mtok=2.0,
            upstream_base_url="https://api.example.com/v1",
            upstream_model="big-model-2025",
            upstream_api_key_env="EXAMPLE_API_KEY",
        ),
    ),
    policy="thompson",
    exploration=0.25,
    default_cost_weight=2.5,
    embedding_dim=32,
    feedback_ttl_seconds=600,
    prior_output_tokens=120,
    forgetting=0.99,
    prior_quality=0.0,
    prior_weight=4.0,
    explore_new_arm=50,
    default_reward=0.5,
    reward_wait_seconds=900,
    combine="mean",
    thumb_up_reward=0.9,
    thumb_down_reward=0.1,
    shadows=(ShadowSpec("eps", "epsilon-greedy", 0.05, 1.0), ShadowSpec("lin")),
    feedback_cap_per_key=100,
    feedback_cap_window_seconds=60,
    breaker_error_rate=0.3,
    breaker_min_events=10,
    breaker_cooldown_seconds=5,
    encoder="hashing",
    metadata_keys=("app", "tier"),
    metadata_slots=8,
    pca_dim=8,
    pca_fit_samples=64,
    knn_k=5,
    text_window_tokens=256,
    default_latency_weight=0.2,
    default_energy_weight=0.05,
)
MINIMAL = RouterSpec(tenant="acme", name="chat", arms=(ArmSpec("a", 1.0, 2.0),))


def router_file(*entries: str) -> str:
    """A routers file of the given router entries (each a YAML mapping, indented by 4)."""
    return "routers:\n" + "".join(f"  - {entry.strip()}\n" for entry in entries)


def entry(tenant: str = "acme", name: str = "chat", arms: str = f"[{ARM}]", **keys: str) -> str:
    lines = [f"tenant: {tenant}", f"name: {name}", f"arms: {arms}"]
    lines += [f"{k}: {v}" for k, v in keys.items()]
    return "\n    ".join(lines)


def test_every_key_away_from_its_default_round_trips() -> None:
    text = routers_file.dump([EVERYTHING, MINIMAL])
    assert routers_file.parse(text, "x.yaml") == [EVERYTHING, MINIMAL]
    as_json = routers_file.dump([EVERYTHING, MINIMAL], as_json=True)
    assert routers_file.parse(as_json, "x.json", as_json=True) == [EVERYTHING, MINIMAL]
    # Every settable key of the API shows up, under its proto name (encoder: see below).
    written = routers_file.document(EVERYTHING)
    keys = {f.name for f in pb.RouterConfig.DESCRIPTOR.fields}
    assert set(written) == keys - {"version", "encoder"}
    assert set(written["shadows"][0]) == {f.name for f in pb.ShadowPolicy.DESCRIPTOR.fields}
    assert set(written["arms"][1]) == {f.name for f in pb.Arm.DESCRIPTOR.fields}


def test_defaults_are_left_out() -> None:
    assert routers_file.dump([MINIMAL]) == (
        "routers:\n"
        "  - tenant: acme\n"
        "    name: chat\n"
        "    arms:\n"
        "      - {name: a, input_price_per_mtok: 1.0, output_price_per_mtok: 2.0}\n"
    )
    # An encoder with a fixed size: its size is the default, the encoder is written.
    static = dataclasses.replace(MINIMAL, encoder="minilm-static", embedding_dim=256)
    assert routers_file.document(static) == {
        **routers_file.document(MINIMAL),
        "encoder": "minilm-static",
    }
    assert routers_file.parse(routers_file.dump([static]), "x.yaml") == [static]


def test_the_example_ships_once() -> None:
    """The package's example (serve --example-router) is the repository's examples/routers.yaml."""
    packaged = REPO / "banditd" / routers_file.EXAMPLE
    assert (REPO / "examples" / "routers.yaml").read_bytes() == packaged.read_bytes(), (
        "examples/routers.yaml differs from banditd/examples/routers.yaml: copy one onto the other"
    )
    (demo,) = routers_file.example()
    assert (demo.tenant, demo.name, len(demo.arms)) == ("demo", "chat", 6)
    assert routers_file.read(REPO / "examples" / "routers.yaml") == [demo]


def test_the_docs_describe_every_key() -> None:
    doc = (REPO / "docs" / "routers.md").read_text()
    for message in (pb.RouterConfig, pb.Arm, pb.ShadowPolicy):
        for field in message.DESCRIPTOR.fields:
            if field.name != "version":
                assert re.search(rf"^\| `{field.name}` \|", doc, re.M), field.name


def test_null_unsets_an_optional_key_and_json_is_read_by_suffix(tmp_path: Path) -> None:
    text = router_file(entry(default_reward="null", prior_quality="~"))
    assert routers_file.parse(text, "x.yaml") == [MINIMAL]
    path = tmp_path / "r.json"
    path.write_text(routers_file.dump([MINIMAL], as_json=True))
    assert routers_file.read(path) == [MINIMAL]


# (file text, the whole error): the file's shape, then its routers.
BAD_DOCUMENTS = [
    ("", "f.yaml: expected a mapping with a routers list, got nothing (null)"),
    ("- tenant: a\n", "f.yaml: expected a mapping with a routers list, got a list"),
    ("router: []\n", "f.yaml: unknown key 'router' (expected a mapping with a routers list)"),
    ("routers: {}\n", "f.yaml: routers: must be a list, got a mapping"),
    (
        "routers:\n  - tenant: a\n  tenant: b\n",
        "f.yaml: line 3, column 3: not valid YAML: expected <block end>, but found '?'",
    ),
    (
        "routers:\n  - {tenant: a, tenant: b}\n",
        "f.yaml: line 2, column 17: not valid YAML: key 'tenant' given twice",
    ),
    (
        "routers:\n  - 3\n",
        "f.yaml: routers[0]: must be a mapping of RouterConfig keys, got a number (3)",
    ),
    (
        router_file(entry(knn_k="1" * 5000)),
        "f.yaml: not valid YAML: Exceeds the limit (4300 digits) for integer string "
        "conversion: value has 5000 digits",
    ),
]
BAD_ROUTERS = [
    (
        router_file(entry(arms="[]")),
        "f.yaml: router acme/chat: arms: a router needs at least one arm",
    ),
    (router_file("name: chat\n    arms: []"), "f.yaml: routers[0]: tenant: required"),
    (
        router_file(entry(tenant="'a b'")),
        "f.yaml: routers[0]: tenant: must be 1-128 characters of "
        "letters, digits and ._:/@+- (no spaces)",
    ),
    (
        router_file(entry(polcy="thompson")),
        "f.yaml: router acme/chat: polcy: unknown key (did you mean 'policy'?)",
    ),
    (
        router_file(entry(version="3")),
        "f.yaml: router acme/chat: version: read-only (the server sets it)",
    ),
    (
        router_file(entry(policy="ucb")),
        "f.yaml: router acme/chat: policy: must be one of linucb, thompson, epsilon-greedy",
    ),
    (
        router_file(entry(policy="3")),
        "f.yaml: router acme/chat: policy: must be a string, got a number (3)",
    ),
    (
        router_file(entry(exploration="'high'")),
        "f.yaml: router acme/chat: exploration: must be a number, got a string ('high')",
    ),
    (
        router_file(entry(exploration=".inf")),
        "f.yaml: router acme/chat: exploration: must be a finite number, got inf",
    ),
    # YAML and JSON read an integer of any length; past float range it is refused, not a crash.
    (
        router_file(entry(exploration="1" + "0" * 400)),
        "f.yaml: router acme/chat: exploration: must be a finite number, got 1e+400 or so "
        "(past float range)",
    ),
    (
        router_file(entry(knn_k="-1" + "0" * 400)),
        "f.yaml: router acme/chat: knn_k: must be in 0..4294967295, got -1e+400 or so "
        "(past float range)",
    ),
    (
        router_file(entry(embedding_dim="16.5")),
        "f.yaml: router acme/chat: embedding_dim: must be a whole number, got 16.5",
    ),
    (
        router_file(entry(knn_k="-1")),
        "f.yaml: router acme/chat: knn_k: must be in 0..4294967295, got -1",
    ),
    (
        router_file(entry(knn_k="true")),
        "f.yaml: router acme/chat: knn_k: must be a number, got a boolean (true)",
    ),
    (
        router_file(entry(default_reward="1.5")),
        "f.yaml: router acme/chat: default_reward: must be in [0, 1]",
    ),
    (
        router_file(entry(metadata_keys="app")),
        "f.yaml: router acme/chat: metadata_keys: must be a list, got a string ('app')",
    ),
    (
        router_file(entry(metadata_keys="[app, 7]")),
        "f.yaml: router acme/chat: metadata_keys[1]: must be a string, got a number (7)",
    ),
    (
        router_file(
            entry(arms=f"[{ARM}, {{name: b, input_price_per_mtok: -1, output_price_per_mtok: 2}}]")
        ),
        "f.yaml: router acme/chat: arms[1].input_price_per_mtok: must be >= 0, got -1",
    ),
    (
        router_file(entry(arms="[{name: b, input_price_per_mtok: 1}]")),
        "f.yaml: router acme/chat: arms[0].output_price_per_mtok: required",
    ),
    (
        router_file(entry(arms=f"[{ARM}, {ARM}]")),
        "f.yaml: router acme/chat: arms: duplicate arm names: a",
    ),
    (
        router_file(entry(arms=f"[{ARM[:-1]}, disabled: 'no'}}]")),
        "f.yaml: router acme/chat: arms[0].disabled: must be true or false, got a string ('no')",
    ),
    (
        router_file(entry(arms=f"[{ARM[:-1]}, price: 1}}]")),
        "f.yaml: router acme/chat: arms[0].price: unknown key",
    ),
    (
        router_file(entry(shadows="[{name: s, policy: greedy}]")),
        "f.yaml: router acme/chat: "
        "shadows[0].policy: must be one of linucb, thompson, epsilon-greedy",
    ),
    (
        router_file(entry(encoder="minilm", embedding_dim="16")),
        "f.yaml: router acme/chat: embedding_dim: encoder 'minilm' gives 384 values (set 384 or 0)",
    ),
    # The server's fixed bounds (banditd.domain.bounds; its settings' are the server's alone).
    (
        router_file(entry(exploration="5000")),
        "f.yaml: router acme/chat: exploration: must be in [0, 1000], got 5000",
    ),
    (
        router_file(entry(feedback_ttl_seconds="40000000")),
        "f.yaml: router acme/chat: feedback_ttl_seconds: must be in [0, 31622400], got 40000000",
    ),
    (
        router_file(entry(arms=f"[{ARM[:-1]}, input_energy_wh_per_mtok: 2000000}}]")),
        "f.yaml: router acme/chat: "
        "arms[0].input_energy_wh_per_mtok: must be in [0, 1e+06], got 2e+06",
    ),
    (
        router_file(entry(shadows="[{name: s, exploration: 5000}]")),
        "f.yaml: router acme/chat: shadows[0].exploration: must be in [0, 1000], got 5000",
    ),
    (
        router_file(entry(), entry()),
        "f.yaml: router acme/chat: listed twice (routers[0] and routers[1])",
    ),
    # Every bad router is reported, not only the first.
    (
        router_file(entry(knn_k="-1"), entry(name="ok"), entry(name="two", policy="x")),
        "f.yaml: router acme/chat: knn_k: must be in 0..4294967295, got -1\n"
        "f.yaml: router acme/two: policy: must be one of linucb, thompson, epsilon-greedy",
    ),
]


@pytest.mark.parametrize(("text", "error"), BAD_DOCUMENTS + BAD_ROUTERS)
def test_bad_files_are_refused_naming_file_router_and_field(text: str, error: str) -> None:
    with pytest.raises(RoutersFileError) as refused:
        routers_file.parse(text, "f.yaml")
    assert str(refused.value) == error


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"routers": [}', "f.json: line 1, column 14: not valid JSON: Expecting value"),
        ('{"routers": [], "routers": []}', "f.json: key 'routers' given twice in one object"),
        (
            '{"routers": [{"knn_k": ' + "1" * 5000 + "}]}",
            "f.json: not valid JSON: Exceeds the limit (4300 digits) for integer string "
            "conversion: value has 5000 digits",
        ),
    ],
)
def test_bad_json_files(text: str, error: str) -> None:
    with pytest.raises(RoutersFileError) as refused:
        routers_file.parse(text, "f.json", as_json=True)
    assert str(refused.value) == error


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RoutersFileError, match=r"nope.yaml: cannot read it: No such file"):
        routers_file.read(tmp_path / "nope.yaml")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe routers")
    with pytest.raises(RoutersFileError, match=r"b.yaml: not UTF-8 text"):
        routers_file.read(binary)


def test_same_and_diff() -> None:
    live = dataclasses.replace(MINIMAL, version=3)
    assert routers_file.same(live, MINIMAL)
    cheaper = dataclasses.replace(MINIMAL, arms=(ArmSpec("a", 0.5, 2.0),), policy="thompson")
    assert not routers_file.same(live, cheaper)
    assert routers_file.diff(live, cheaper, "r.yaml") == [
        "--- acme/chat (live, version 3)",
        "+++ acme/chat (r.yaml)",
        "@@ -1,4 +1,5 @@",
        " tenant: acme",
        " name: chat",
        " arms:",
        "-  - {name: a, input_price_per_mtok: 1.0, output_price_per_mtok: 2.0}",
        "+  - {name: a, input_price_per_mtok: 0.5, output_price_per_mtok: 2.0}",
        "+policy: thompson",
    ]


NAMES = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,20}\Z")
PRICES = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(
    tenant=NAMES,
    name=NAMES,
    arms=st.dictionaries(NAMES, st.tuples(PRICES, PRICES), min_size=1, max_size=4),
    keys=st.lists(NAMES, max_size=3, unique=True),
)
@example(
    tenant="yes",
    name="null",
    arms={"1e3": (0.0, 1e-7), "on": (1.5, 2.0), "a:b": (3.0, 4.0)},
    keys=["no", "0x1F", "2026-01-01"],
)
@settings(max_examples=100, deadline=None)
def test_any_names_and_prices_round_trip(
    tenant: str, name: str, arms: dict[str, tuple[float, float]], keys: list[str]
) -> None:
    """Names YAML would read as something else (yes, null, 1e3, a:b) come back as names."""
    spec = RouterSpec(
        tenant=tenant,
        name=name,
        arms=tuple(ArmSpec(arm, *prices) for arm, prices in arms.items()),
        metadata_keys=tuple(keys),
    )
    assert routers_file.parse(routers_file.dump([spec]), "x.yaml") == [spec]
    assert routers_file.parse(routers_file.dump([spec], as_json=True), "x", as_json=True) == [spec]
