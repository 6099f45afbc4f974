"""Every match key and operator of the rule language, positive and negative, through real rule files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fedmsg_notify.bus.envelope import Message, split_topic
from fedmsg_notify.config.model import load_config
from fedmsg_notify.matching.rules import RuleSet
from fedmsg_notify.meta.engine import Meta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOPIC = "org.fedoraproject.prod.buildsys.build.state.change"
BODY: dict[str, Any] = {
    "owner": "ralph",
    "name": "eclipse-ptp",
    "new": 1,
    "old": 0,
    "ratio": 0.5,
    "flag": True,
    "nothing": None,
    "version": "6.0.3",
    "tags": ["f40", "f41-candidate"],
    "update": {"builds": [{"nvr": "foo-1.0-1.fc40"}, {"nvr": "bar-2.0-1.fc40"}], "user": {"name": "lmacken"}},
    "comment": "ping @ralph please",
}


def meta(
    agent: str | None = "ralph", usernames: tuple[str, ...] = ("ralph", "lmacken"), packages=("eclipse-ptp",)
) -> Meta:
    return Meta(title="t", subtitle="s", link=None, icon=None, agent=agent, usernames=usernames, packages=packages)


def message(topic: str = TOPIC, body: Any = None, **envelope: Any) -> Message:
    return Message.from_envelope(
        {"topic": topic, "msg": BODY if body is None else body, "timestamp": 1, "msg_id": "2024-x", **envelope}
    )


def load(tmp_path: Path, match: Any, me: str | None = None) -> RuleSet:
    """A rule file with one rule using ``match``, loaded against a console account."""
    config = load_config(tmp_path / "config.yaml", "accounts: {out: {backend: console}}\nrules: [rules]\n")
    (tmp_path / "rules").mkdir(exist_ok=True)
    doc: dict[str, Any] = {"rules": [{"name": "r", "match": match, "deliver": [{"via": "out"}]}]}
    if me is not None:
        doc["me"] = me
    (tmp_path / "rules" / "r.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return RuleSet.load(config.rule_paths, config.accounts)


def matches(ruleset: RuleSet, msg: Message, m: Meta) -> bool:
    indexed = bool(ruleset.routes(msg, m))
    # The index must never change the answer: compare with testing the rule directly.
    assert indexed == bool(ruleset.matching_brute_force(msg, m))
    return indexed


CASES: list[tuple[str, Any, str, bool]] = [
    # topic globs
    ("topic exact", {"topic": TOPIC}, TOPIC, True),
    ("topic exact other", {"topic": TOPIC}, "org.fedoraproject.prod.bodhi.update.comment", False),
    ("topic star crosses dots", {"topic": "org.*.change"}, TOPIC, True),
    ("topic leading star", {"topic": "*.buildsys.build.state.change"}, TOPIC, True),
    (
        "topic leading star needs the dot",
        {"topic": "*.build.state.change"},
        "org.fedoraproject.prod.xbuild.state.change",
        False,
    ),
    ("topic trailing star", {"topic": "org.fedoraproject.prod.buildsys.*"}, TOPIC, True),
    ("topic trailing star other", {"topic": "org.fedoraproject.prod.bodhi.*"}, TOPIC, False),
    (
        "topic dot is literal",
        {"topic": "org.fedoraproject.prod.buildsys.*"},
        "org.fedoraproject.prodXbuildsys.build",
        False,
    ),
    ("topic star both ends", {"topic": "*buildsys*"}, TOPIC, True),
    ("topic star both ends other", {"topic": "*bodhi*"}, TOPIC, False),
    ("topic question mark", {"topic": "org.fedoraproject.?rod.*"}, TOPIC, True),
    ("topic question mark is one char", {"topic": "org.fedoraproject.?.*"}, TOPIC, False),
    ("topic class", {"topic": "org.fedoraproject.[ps]*.buildsys.*"}, TOPIC, True),
    ("topic negated class", {"topic": "org.fedoraproject.[!p]*.buildsys.*"}, TOPIC, False),
    ("topic middle stars", {"topic": "org.*.prod.*.change"}, TOPIC, True),
    ("topic list any", {"topic": ["*.bodhi.*", "*.buildsys.*"]}, TOPIC, True),
    ("topic list none", {"topic": ["*.bodhi.*", "*.copr.*"]}, TOPIC, False),
    ("topic is the whole topic", {"topic": "buildsys.build"}, TOPIC, False),
    # topic parts
    ("service", {"service": "buildsys"}, TOPIC, True),
    ("service other", {"service": "bodhi"}, TOPIC, False),
    ("service list", {"service": ["bodhi", "buildsys"]}, TOPIC, True),
    ("env", {"env": "prod"}, TOPIC, True),
    ("env other", {"env": "stg"}, TOPIC, False),
    ("env list", {"env": ["stg", "prod"]}, TOPIC, True),
    # metadata
    ("users one", {"users": "lmacken"}, TOPIC, True),
    ("users list", {"users": ["nobody", "ralph"]}, TOPIC, True),
    ("users none", {"users": ["nobody"]}, TOPIC, False),
    ("agent", {"agent": "ralph"}, TOPIC, True),
    ("agent other", {"agent": "lmacken"}, TOPIC, False),
    ("packages", {"packages": ["foo", "eclipse-ptp"]}, TOPIC, True),
    ("packages none", {"packages": "foo"}, TOPIC, False),
    # field operators
    ("equals", {"field": {"path": "msg.owner", "equals": "ralph"}}, TOPIC, True),
    ("equals other", {"field": {"path": "msg.owner", "equals": "bob"}}, TOPIC, False),
    ("equals number", {"field": {"path": "msg.new", "equals": 1}}, TOPIC, True),
    ("equals int and float", {"field": {"path": "msg.new", "equals": 1.0}}, TOPIC, True),
    ("equals is typed", {"field": {"path": "msg.new", "equals": "1"}}, TOPIC, False),
    ("equals true is not 1", {"field": {"path": "msg.new", "equals": True}}, TOPIC, False),
    ("equals bool", {"field": {"path": "msg.flag", "equals": True}}, TOPIC, True),
    ("equals null", {"field": {"path": "msg.nothing", "equals": None}}, TOPIC, True),
    ("equals missing field", {"field": {"path": "msg.absent", "equals": None}}, TOPIC, False),
    ("in", {"field": {"path": "msg.new", "in": [1, 3]}}, TOPIC, True),
    ("in other", {"field": {"path": "msg.new", "in": [3]}}, TOPIC, False),
    ("in strings", {"field": {"path": "msg.owner", "in": ["bob", "ralph"]}}, TOPIC, True),
    ("matches", {"field": {"path": "msg.version", "matches": "^6\\.0"}}, TOPIC, True),
    ("matches searches", {"field": {"path": "msg.comment", "matches": "@ralph"}}, TOPIC, True),
    ("matches other", {"field": {"path": "msg.version", "matches": "^7"}}, TOPIC, False),
    ("matches only strings", {"field": {"path": "msg.new", "matches": "1"}}, TOPIC, False),
    ("contains substring", {"field": {"path": "msg.comment", "contains": "@ralph"}}, TOPIC, True),
    ("contains substring other", {"field": {"path": "msg.comment", "contains": "@bob"}}, TOPIC, False),
    ("contains list element", {"field": {"path": "msg.tags", "contains": "f40"}}, TOPIC, True),
    ("contains list is not substring", {"field": {"path": "msg.tags", "contains": "f4"}}, TOPIC, False),
    ("contains mapping key", {"field": {"path": "msg.update", "contains": "builds"}}, TOPIC, True),
    ("contains on number", {"field": {"path": "msg.new", "contains": 1}}, TOPIC, False),
    ("exists", {"field": {"path": "msg.owner", "exists": True}}, TOPIC, True),
    ("exists null value", {"field": {"path": "msg.nothing", "exists": True}}, TOPIC, True),
    ("exists missing", {"field": {"path": "msg.absent", "exists": True}}, TOPIC, False),
    ("exists false", {"field": {"path": "msg.absent", "exists": False}}, TOPIC, True),
    ("exists false present", {"field": {"path": "msg.owner", "exists": False}}, TOPIC, False),
    ("gt", {"field": {"path": "msg.new", "gt": 0}}, TOPIC, True),
    ("gt equal", {"field": {"path": "msg.new", "gt": 1}}, TOPIC, False),
    ("ge equal", {"field": {"path": "msg.new", "ge": 1}}, TOPIC, True),
    ("ge less", {"field": {"path": "msg.new", "ge": 2}}, TOPIC, False),
    ("lt float", {"field": {"path": "msg.ratio", "lt": 1}}, TOPIC, True),
    ("lt equal", {"field": {"path": "msg.new", "lt": 1}}, TOPIC, False),
    ("le equal", {"field": {"path": "msg.new", "le": 1}}, TOPIC, True),
    ("le greater", {"field": {"path": "msg.new", "le": 0}}, TOPIC, False),
    ("gt strings", {"field": {"path": "msg.version", "gt": "5"}}, TOPIC, True),
    ("gt string against number", {"field": {"path": "msg.version", "gt": 5}}, TOPIC, False),
    ("gt bool is not a number", {"field": {"path": "msg.flag", "gt": 0}}, TOPIC, False),
    # paths
    ("star any element", {"field": {"path": "msg.update.builds[*].nvr", "equals": "bar-2.0-1.fc40"}}, TOPIC, True),
    ("star no element", {"field": {"path": "msg.update.builds[*].nvr", "equals": "baz"}}, TOPIC, False),
    ("index", {"field": {"path": "msg.update.builds[1].nvr", "matches": "^bar-"}}, TOPIC, True),
    ("index out of range", {"field": {"path": "msg.update.builds[5].nvr", "exists": True}}, TOPIC, False),
    ("star over a string", {"field": {"path": "msg.owner[*]", "exists": True}}, TOPIC, False),
    ("nested", {"field": {"path": "msg.update.user.name", "equals": "lmacken"}}, TOPIC, True),
    ("rooted at the envelope", {"field": {"path": "topic", "matches": "buildsys"}}, TOPIC, True),
    ("envelope username", {"field": {"path": "username", "equals": "apache"}}, TOPIC, True),
    ("msg_id", {"field": {"path": "msg_id", "equals": "2024-x"}}, TOPIC, True),
    # combinations
    ("all keys must hold", {"service": "buildsys", "agent": "lmacken"}, TOPIC, False),
    ("all keys hold", {"service": "buildsys", "agent": "ralph", "env": "prod"}, TOPIC, True),
    ("all list", {"all": [{"service": "buildsys"}, {"field": {"path": "msg.new", "equals": 1}}]}, TOPIC, True),
    (
        "all list one fails",
        {"all": [{"service": "buildsys"}, {"field": {"path": "msg.new", "equals": 3}}]},
        TOPIC,
        False,
    ),
    ("any list", {"any": [{"service": "bodhi"}, {"field": {"path": "msg.new", "equals": 1}}]}, TOPIC, True),
    ("any list none", {"any": [{"service": "bodhi"}, {"agent": "bob"}]}, TOPIC, False),
    ("not", {"not": {"agent": "bob"}}, TOPIC, True),
    ("not held", {"not": {"agent": "ralph"}}, TOPIC, False),
    ("not with several keys", {"not": {"service": "buildsys", "agent": "bob"}}, TOPIC, True),
    ("not of topics", {"not": {"topic": ["*.buildsys.repo.*", "*.buildsys.tag"]}}, TOPIC, True),
    (
        "not of topics held",
        {"not": {"topic": ["*.buildsys.repo.*", "*.buildsys.tag"]}},
        "org.fedoraproject.prod.buildsys.tag",
        False,
    ),
    ("nested not in any", {"any": [{"not": {"service": "buildsys"}}, {"users": "lmacken"}]}, TOPIC, True),
    ("everything", {}, TOPIC, True),
]


@pytest.mark.parametrize(("match", "topic", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_match_key(tmp_path: Path, match: Any, topic: str, expected: bool) -> None:
    """A rule matches exactly the messages its conditions describe; a wrong answer means missed or spurious notifications."""
    ruleset = load(tmp_path, match)
    assert matches(ruleset, message(topic, username="apache"), meta()) is expected


ME_CASES: list[tuple[str, Any, Meta, bool]] = [
    ("users $me", {"users": "$me"}, meta(usernames=("ralph",)), True),
    ("users $me other", {"users": "$me"}, meta(usernames=("bob",)), False),
    ("agent $me in not", {"not": {"agent": "$me"}}, meta(agent="ralph"), False),
    ("agent $me in not other", {"not": {"agent": "$me"}}, meta(agent="bob"), True),
    ("field $me", {"field": {"path": "msg.owner", "equals": "$me"}}, meta(), True),
    ("field $me in list", {"field": {"path": "msg.owner", "in": ["x", "$me"]}}, meta(), True),
    ("field $me in text", {"field": {"path": "msg.comment", "contains": "@$me"}}, meta(), True),
    ("packages $me", {"packages": ["$me"]}, meta(packages=("ralph",)), True),
]


@pytest.mark.parametrize(("match", "m", "expected"), [c[1:] for c in ME_CASES], ids=[c[0] for c in ME_CASES])
def test_me_substitution(tmp_path: Path, match: Any, m: Meta, expected: bool) -> None:
    """``$me`` stands for the file's ``me:``, so one shipped rule file works for whoever sets their name."""
    ruleset = load(tmp_path, match, me="ralph")
    assert matches(ruleset, message(), m) is expected


def test_me_in_a_regex_is_literal(tmp_path: Path) -> None:
    """A username with regex characters in ``matches`` is matched literally, not as a pattern."""
    ruleset = load(tmp_path, {"field": {"path": "msg.owner", "matches": "^$me$"}}, me="r.lph")
    assert not matches(ruleset, message(), meta())
    assert matches(ruleset, message(body={**BODY, "owner": "r.lph"}), meta())


WHY_NOT = [
    ({"field": {"path": "msg.new", "in": [3]}}, "field msg.new in [3]: got 1"),
    ({"field": {"path": "msg.absent", "equals": "x"}}, 'field msg.absent equals "x": got nothing (no such field)'),
    ({"topic": "*.bodhi.*"}, f'topic "*.bodhi.*": got "{TOPIC}"'),
    ({"service": ["bodhi", "copr"]}, 'service ["bodhi", "copr"]: got "buildsys"'),
    ({"users": "bob"}, 'users "bob": got ["ralph", "lmacken"]'),
    ({"agent": "bob"}, 'agent "bob": got "ralph"'),
    ({"packages": "foo"}, 'packages "foo": got ["eclipse-ptp"]'),
    ({"not": {"agent": "ralph"}}, 'not agent "ralph": it held'),
    ({"service": "buildsys", "env": "stg", "agent": "bob"}, 'env "stg": got "prod"'),
    (
        {"any": [{"service": "bodhi"}, {"agent": "bob"}]},
        'any: none held (service "bodhi": got "buildsys"; agent "bob": got "ralph")',
    ),
]


@pytest.mark.parametrize(("match", "reason"), WHY_NOT, ids=[r for _, r in WHY_NOT])
def test_first_failed_condition_is_described(tmp_path: Path, match: Any, reason: str) -> None:
    """``explain`` names the first condition that failed and what the message had instead."""
    ruleset = load(tmp_path, match)
    [verdict] = ruleset.explain(message(), meta())
    assert not verdict.matched
    assert verdict.failed == reason


def test_matching_rule_has_no_failure(tmp_path: Path) -> None:
    """A matching rule's verdict says matched and names no failed condition."""
    ruleset = load(tmp_path, {"service": "buildsys"})
    [verdict] = ruleset.explain(message(), meta())
    assert verdict.matched and verdict.failed is None


@pytest.mark.timeout(10)
def test_redos_pattern_cannot_stall_matching(tmp_path: Path) -> None:
    """The classic catastrophic regex ``(a+)+$`` against 30 a's and a '!' answers at once instead of hanging the daemon."""
    ruleset = load(tmp_path, {"field": {"path": "msg.text", "matches": "(a+)+$"}})
    hostile = message(body={"text": "a" * 30 + "!"})
    started = time.perf_counter()
    for _ in range(100):
        assert not matches(ruleset, hostile, meta())
    assert time.perf_counter() - started < 1.0
    assert matches(ruleset, message(body={"text": "a" * 30}), meta())


def test_hostile_message_shapes_never_raise(tmp_path: Path) -> None:
    """Bodies of any JSON shape are simply non-matches for field conditions, never errors."""
    ruleset = load(
        tmp_path,
        {"any": [{"field": {"path": "msg.a[*].b[0].c", "gt": 1}}, {"field": {"path": "msg.a", "contains": "zzz"}}]},
    )
    for body in (None, [], "text", 3, {"a": None}, {"a": [1, "x", None, {"b": "no"}]}, {"a": {"b": [{"c": "2"}]}}):
        assert not matches(ruleset, message(body=body), meta())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
HOSTILE_RULES = {
    "all": [
        {"not": {"field": {"path": "msg.a[*].b", "equals": "x"}}},
        {
            "any": [
                {"field": {"path": "msg.a[*]", "matches": "(a+)+$"}},
                {"field": {"path": "msg.a[0].b[*]", "gt": 2}},
                {"field": {"path": "msg.a", "contains": "z"}},
                {"field": {"path": "msg[*][*]", "in": ["a", 1, None]}},
                {"field": {"path": "msg.a.b", "le": "m"}},
                {"field": {"path": "msg.a", "exists": False}},
                {"topic": "*.x?y*"},
            ]
        },
    ]
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON, topic=st.text(min_size=1, max_size=60))
def test_arbitrary_messages_never_break_evaluation(tmp_path: Path, body: Any, topic: str) -> None:
    """Whatever JSON arrives on the bus, rule evaluation and explain answer without raising."""
    ruleset = load(tmp_path, HOSTILE_RULES)
    # Built directly: the decoder refuses some of these topics, evaluation must not rely on it.
    envelope = {"topic": topic, "msg": {"a": body} if not isinstance(body, dict) else body, "timestamp": 1, "msg_id": "2024-x"}
    msg = Message(topic=topic, envelope=envelope, parts=split_topic(topic), msg_id="2024-x")
    m = meta()
    routes = ruleset.routes(msg, m)
    assert len(routes) == len(ruleset.matching_brute_force(msg, m))
    [verdict] = ruleset.explain(msg, m)
    assert verdict.matched == bool(routes)
