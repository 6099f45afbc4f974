"""Loading rule files: directories, destinations, dedup, limits, errors, and the candidate index."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import re2
from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.envelope import MalformedMessage, Message
from fedmsg_notify.commands.demo import demo_config_text
from fedmsg_notify.config.model import Config, default_config_text, load_config
from fedmsg_notify.config.yaml_positions import LocatedDocument, ProblemsError
from fedmsg_notify.matching.rules import Digest, RuleSet, parse_duration
from fedmsg_notify.meta.engine import Meta, compute_meta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOPIC = "org.fedoraproject.prod.bodhi.update.comment"


def config(tmp_path: Path) -> Config:
    token = tmp_path / "token"
    token.write_text("secret-token\n", encoding="utf-8")
    text = textwrap.dedent(
        f"""
        accounts:
          out: {{backend: console}}
          mail: {{backend: console}}
          libera: {{backend: irc, server: "irc://127.0.0.1:6667", nick: bot}}
          toot: {{backend: mastodon, instance: "https://example.org", token_file: {token}}}
        rules: [rules]
        """
    )
    (tmp_path / "rules").mkdir(exist_ok=True)
    return load_config(tmp_path / "config.yaml", text)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "rules" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(ProblemsError) as caught:
        RuleSet.load(config(tmp_path).rule_paths, config(tmp_path).accounts)
    prefix = str(tmp_path / "rules") + "/"
    return [str(p).removeprefix(prefix) for p in caught.value.problems]


def msg(topic: str = TOPIC, body: Any = None) -> Message:
    return Message.from_envelope({"topic": topic, "msg": body or {}, "timestamp": 1, "msg_id": "m1"})


def meta(agent: str | None = None, usernames: tuple[str, ...] = (), packages: tuple[str, ...] = ()) -> Meta:
    return Meta(title="", subtitle="", link=None, icon=None, agent=agent, usernames=usernames, packages=packages)


def test_one_destination_gets_a_message_once(tmp_path: Path) -> None:
    """Three rules routing one message to the same place deliver it once, attributed to the first rule."""
    write(
        tmp_path,
        "a.yaml",
        """
        rules:
          - {name: first, match: {service: bodhi}, deliver: [{via: libera, to: "#chan"}, {via: out}]}
          - {name: second, match: {topic: "*.comment"}, deliver: [{via: libera, to: "#chan"}, {via: libera, to: "#other"}]}
        """,
    )
    write(tmp_path, "b.yaml", "rules:\n  - {name: third, match: {}, deliver: [{via: out}, {via: mail}]}\n")
    cfg = config(tmp_path)
    routes = RuleSet.load(cfg.rule_paths, cfg.accounts).routes(msg(), meta())
    assert [(r.destination, r.rule.name) for r in routes] == [
        (Destination("libera", "#chan"), "first"),
        (Destination("out"), "first"),
        (Destination("libera", "#other"), "second"),
        (Destination("mail"), "third"),
    ]


def test_destination_fields_are_kept(tmp_path: Path) -> None:
    """A destination's template, digest and backend options reach the route as written."""
    write(
        tmp_path,
        "a.yaml",
        """
        rules:
          - name: r
            match: {service: bodhi}
            deliver:
              - {via: toot, visibility: unlisted, template: short.j2}
              - {via: libera, to: "#c", digest: {every: 1h30m, max: 20}}
              - {via: mail, digest: {max: 5, template: console/weekly.j2}}
              - {via: out, digest: {every: 30m}}
        """,
    )
    cfg = config(tmp_path)
    routes = RuleSet.load(cfg.rule_paths, cfg.accounts).routes(msg(), meta())
    assert routes[0].options == {"visibility": "unlisted"} and routes[0].template == "short.j2"
    assert routes[0].digest is None
    assert routes[1].digest == Digest(every_seconds=5400, max=20)
    assert routes[2].digest == Digest(every_seconds=None, max=5, template="console/weekly.j2")
    assert routes[3].digest == Digest(every_seconds=1800, max=None)
    assert routes[1].rule.line == 3 and routes[1].rule.file.endswith("a.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("30m", 1800), ("1h", 3600), ("1d", 86400), ("1h30m", 5400), (90, 90)]
)
def test_durations(text: Any, seconds: float) -> None:
    """Digest intervals read the way people write them."""
    assert parse_duration(text) == seconds


def test_directories_files_and_order(tmp_path: Path) -> None:
    """Rule files load from every configured directory (sorted by name) or file, in config order; others are ignored."""
    write(tmp_path, "b.yaml", "rules: [{name: b, match: {}, deliver: [{via: out}]}]\n")
    write(tmp_path, "a.yaml", "rules: [{name: a, match: {}, deliver: [{via: out}]}]\n")
    write(tmp_path, "notes.txt", "not a rule file")
    extra = tmp_path / "extra.yaml"
    extra.write_text("rules: [{name: x, match: {}, deliver: [{via: mail}]}]\n", encoding="utf-8")
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    cfg = config(tmp_path)
    ruleset = RuleSet.load([tmp_path / "rules", extra, tmp_path / "empty.yaml"], cfg.accounts)
    assert [r.rule.name for r in ruleset.rules] == ["a", "b", "x"]
    assert ruleset.files == 4
    # A configured directory that does not exist (say a per-user one) loads nothing.
    assert len(RuleSet.load([tmp_path / "missing", tmp_path / "rules"], cfg.accounts)) == 2


def test_every_problem_in_every_file_is_reported(tmp_path: Path) -> None:
    """One load reports all mistakes with positions and hints, so a user fixes them in one pass."""
    write(
        tmp_path,
        "a.yaml",
        """\
        rules:
          - name: r1
            match: {servce: bodhi, field: {path: msg.x, equal: 1}}
            deliver: [{via: libra, to: "#c"}]
          - name: r2
            match: {users: $me, not: {}}
            deliver: [{via: libera}]
          - name: r1
            match: {field: {path: msg.x, matches: "(a)\\\\1"}}
            deliver: [{via: out, digest: {every: soon, max: 0}, urgency: low}]
        """,
    )
    write(tmp_path, "b.yaml", "rules:\n  - {name: x, match: {any: []}, deliver: []}\n  - [not, a, rule]\nextra: 1\n")
    assert problems(tmp_path) == [
        "a.yaml:3:13: unknown key 'servce' in rules.0.match; did you mean 'service'?",
        "a.yaml:3:49: unknown operator 'equal' in rules.0.match.field; did you mean 'equals'?",
        "a.yaml:4:21: undefined account 'libra'; did you mean 'libera'? (defined: libera, mail, out, toot)",
        "a.yaml:6:20: rules.1.match.users: '$me' is used but this file does not set 'me:'",
        "a.yaml:6:30: rules.1.match.not: needs at least one condition",
        "a.yaml:7:15: missing required key 'to' in rules.1.deliver.0: account 'libera' (irc) needs a recipient",
        "a.yaml:8:11: duplicate rule name 'r1' (also rules.0)",
        "a.yaml:9:43: rules.2.match.field.matches: invalid regex '(a)\\\\1': invalid escape sequence: \\1 "
        "(regexes use RE2 syntax: no backreferences or lookaround)",
        "a.yaml:10:42: rules.2.deliver.0.digest.every: expected a duration like 30m, 1h or 1d, got 'soon'",
        "a.yaml:10:53: rules.2.deliver.0.digest.max: expected a positive whole number, got 0",
        "a.yaml:10:57: unknown key 'urgency' in rules.2.deliver.0 (expected one of: via, to, template, digest)",
        "b.yaml:2:28: rules.0.match.any: expected a non-empty list of condition mappings",
        "b.yaml:2:42: rules.0.deliver: expected a non-empty list of destinations ({via: account, ...})",
        "b.yaml:3:5: rules.1: expected a rule (a mapping with name, match, deliver)",
        "b.yaml:4:1: unknown key 'extra' in top level (expected one of: me, rules)",
    ]


def test_backend_options_are_validated_by_the_backend(tmp_path: Path) -> None:
    """A destination option is checked by its backend's model, with a hint for a misspelled option name."""
    write(
        tmp_path,
        "a.yaml",
        """\
        rules:
          - name: r
            match: {}
            deliver: [{via: toot, visibilty: public}, {via: toot, visibility: loud}]
        """,
    )
    found = problems(tmp_path)
    assert found[0] == "a.yaml:4:27: unknown key 'visibilty' in rules.0.deliver.0; did you mean 'visibility'?"
    assert found[1] == (
        "a.yaml:4:71: rules.0.deliver.1.visibility: expected 'public', 'unlisted', 'private' or 'direct', got 'loud'"
    )
    assert len(found) == 2


def test_yaml_syntax_errors_have_positions(tmp_path: Path) -> None:
    """A file that is not YAML is reported at the offending line, alongside problems in other files."""
    write(tmp_path, "a.yaml", "rules:\n  - name: [unclosed\n")
    write(tmp_path, "b.yaml", "rules: {}\n")
    found = problems(tmp_path)
    assert found[0].startswith("a.yaml:2:11: invalid YAML: the [ here is never closed")
    assert found[1] == "b.yaml:1:8: rules: expected a list of rules (name, match, deliver)"


def test_regex_rejected_by_re2_is_a_load_error(tmp_path: Path) -> None:
    """Lookaround has no linear-time implementation, so such a pattern is refused at load, with its position."""
    write(
        tmp_path,
        "a.yaml",
        'rules: [{name: r, match: {field: {path: msg.x, matches: "(?=a)b"}}, deliver: [{via: out}]}]\n',
    )
    [problem] = problems(tmp_path)
    assert problem.startswith("a.yaml:1:57: rules.0.match.field.matches: invalid regex '(?=a)b'")


def test_regex_too_big_for_re2_is_a_load_error(tmp_path: Path) -> None:
    """A pattern whose compiled program would be enormous is refused at load rather than eating memory."""
    write(
        tmp_path,
        "a.yaml",
        'rules: [{name: r, match: {field: {path: msg.x, matches: "((a{100}){100}){100}"}}, deliver: [{via: out}]}]\n',
    )
    [problem] = problems(tmp_path)
    assert problem.startswith("a.yaml:1:57: rules.0.match.field.matches: invalid regex '((a{100}){100}){100}': ")


def test_rule_count_limit(tmp_path: Path) -> None:
    """A file with more rules than allowed is refused with the count and the limit."""
    rules = "".join(f"  - {{name: r{n}, match: {{}}, deliver: [{{via: out}}]}}\n" for n in range(6))
    write(tmp_path, "a.yaml", "rules:\n" + rules)
    cfg = config(tmp_path)
    assert len(RuleSet.load(cfg.rule_paths, cfg.accounts, max_rules_per_file=6)) == 6
    with pytest.raises(ProblemsError) as caught:
        RuleSet.load(cfg.rule_paths, cfg.accounts, max_rules_per_file=5)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path}/rules/a.yaml:2:3: too many rules: 6 in one file, the limit is 5"
    ]


def test_file_size_limit(tmp_path: Path) -> None:
    """A rule file over the default 5 MB limit is refused without being parsed."""
    write(tmp_path, "big.yaml", "# " + "x" * (5 * 1024 * 1024) + "\nrules: []\n")
    [problem] = problems(tmp_path)
    assert problem == f"big.yaml:1:1: rule file too large: {5 * 1024 * 1024 + 13} bytes, the limit is {5 * 1024 * 1024}"


@pytest.mark.parametrize("source", ["default", "demo"])
def test_shipped_rules_load_with_shipped_configs(tmp_path: Path, source: str) -> None:
    """The embedded default config and the demo config define every account the shipped rules use."""
    if source == "default":
        cfg = load_config("<embedded defaults>", default_config_text())
    else:
        cfg = load_config(tmp_path / "c.yaml", demo_config_text("tcp://127.0.0.1:1", tmp_path / "s.db"))
    ruleset = RuleSet.load(cfg.rule_paths, cfg.accounts)
    names = {r.rule.name for r in ruleset.rules}
    assert {"firehose", "my koji builds", "my bodhi updates", "mentions of me", "packages I follow, hourly"} <= names
    digest = next(r for r in ruleset.rules if r.rule.name == "packages I follow, hourly").routes[0]
    assert digest.destination == Destination("mail", "ralph@example.org")
    assert digest.digest == Digest(every_seconds=3600, max=100)


def test_shipped_desktop_rules_pick_my_build(samples: list[dict[str, Any]]) -> None:
    """Ralph's own koji build pops up on his desktop and goes to the firehose, not to his package digest."""
    cfg = load_config("<embedded defaults>", default_config_text())
    ruleset = RuleSet.load(cfg.rule_paths, cfg.accounts)
    sample = next(s for s in samples if s["id"] == "buildsys.TestKojiBuildStateChangeStart")
    message = Message.from_envelope(sample["message"])
    routes = ruleset.routes(message, compute_meta(message))
    assert [(r.destination.account, r.rule.name) for r in routes] == [
        ("desktop", "my koji builds"),
        ("firehose", "firehose"),
    ]


# --- the index gives exactly the brute-force answer -----------------------------------------------------


def sample_messages(samples: list[dict[str, Any]]) -> list[tuple[Message, Meta]]:
    out = []
    for sample in samples:
        try:
            message = Message.from_envelope(sample["message"])
        except MalformedMessage:
            continue
        out.append((message, compute_meta(message)))
    return out


def vocabulary(pairs: list[tuple[Message, Meta]]) -> dict[str, list[str]]:
    topics = sorted({m.topic for m, _ in pairs})
    nvrs = sorted(
        {
            b["nvr"]
            for m, _ in pairs
            if isinstance(m.body, dict) and isinstance(m.body.get("update"), dict)
            for b in m.body["update"].get("builds") or []
            if isinstance(b, dict) and isinstance(b.get("nvr"), str)
        }
    )
    pieces = sorted({p for t in topics for p in t.split(".")})
    return {
        "topics": topics,
        "pieces": pieces,
        "nvrs": [*nvrs, "none-1-1"],
        "services": [*sorted({m.parts.service for m, _ in pairs}), "nosuch"],
        "users": [*sorted({u for _, x in pairs for u in x.usernames}), "nobody"],
        "packages": [*sorted({p for _, x in pairs for p in x.packages}), "nopkg"],
        "leaves": sorted({(path, json.dumps(value)) for m, _ in pairs for path, value in leaf_paths(m.envelope)}),
    }


def leaf_paths(node: Any, path: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """``(path, scalar)`` for the scalars of an envelope, as a rule would name them (lists as ``[*]`` and ``[0]``)."""
    if isinstance(node, dict) and depth < 4:
        out = []
        for key, child in list(node.items())[:12]:
            if isinstance(key, str) and key and all(c not in key for c in ".[]") and key.strip() == key:
                out.extend(leaf_paths(child, f"{path}.{key}" if path else key, depth + 1))
        return out
    if isinstance(node, list) and depth < 4 and path and node:
        out = [item for child in node[:3] for item in leaf_paths(child, path + "[*]", depth + 1)]
        return out + leaf_paths(node[0], path + "[0]", depth + 1)
    if isinstance(node, (str, int, float, bool)) or node is None:
        return [(path, node)] if path and (not isinstance(node, str) or len(node) < 80) else []
    return []


def condition_strategy(vocab: dict[str, list[str]]) -> st.SearchStrategy[dict[str, Any]]:
    def glob(topic: str, cut: int, mode: int) -> str:
        parts = topic.split(".")
        cut = cut % len(parts)
        if mode == 0:
            return topic
        if mode == 1:
            return ".".join(parts[:cut]) + ".*"
        if mode == 2:
            return "*." + ".".join(parts[cut:])
        if mode == 3:
            return "*" + parts[cut] + "*"
        if mode == 4:
            return ".".join("?" * len(p) if n == cut else p for n, p in enumerate(parts))
        if mode == 5:
            # Both ends wild around whole segments: *.bodhi.update.*
            return "*." + ".".join(parts[cut : cut + 2]) + ".*"
        if mode == 6:
            # Wild in the middle: org.*.bodhi.update.* or org.fedoraproject.*.comment
            return ".".join(parts[:1]) + ".*." + ".".join(parts[cut:])
        if mode == 7:
            # Several stars, partial segments and classes.
            return "*" + ".".join(parts[cut:cut + 1])[1:] + "*." + "*".join(parts[cut + 1 : cut + 3]) + "*"
        if mode == 8:
            return ".".join(parts[:cut]) + "*" + "[a-z]" + ".".join(parts[cut + 1 :])[1:]
        return "*." + parts[cut] + "*"

    globs = st.builds(glob, st.sampled_from(vocab["topics"]), st.integers(0, 8), st.integers(0, 9))

    def regex(leaf: tuple[str, str], cut: int, mode: int) -> dict[str, Any]:
        path, raw = leaf
        text = str(json.loads(raw))
        piece = text[cut % max(1, len(text)) :][: 3 + cut % 7]
        patterns = [
            "^" + re2.escape(text) + "$",
            re2.escape(piece),
            "(?i)" + re2.escape(piece.upper()),
            re2.escape(piece) + r"\d*" + "|" + re2.escape(text[:4]) + "x",
            "^" + re2.escape(text[:2]),
            ".",
            "(" + re2.escape(piece) + ")+[0-9]?" + re2.escape(text[-3:]),
        ]
        return {"field": {"path": path, "matches": patterns[mode % len(patterns)]}}

    def equality(leaf: tuple[str, str], mode: int, other: tuple[str, str]) -> dict[str, Any]:
        path, raw = leaf
        value = json.loads(raw)
        if mode == 0:
            return {"field": {"path": path, "equals": value}}
        if mode == 1:
            return {"field": {"path": path, "in": [value, json.loads(other[1])]}}
        if mode == 2:
            # The same value on another path, or another type (1 against 1.0 and true).
            flipped = float(value) if isinstance(value, int) and not isinstance(value, bool) else value
            return {"field": {"path": other[0], "equals": flipped}}
        if mode in (3, 4):
            return {"field": {"path": path, "exists": mode == 3}}
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            # Bounds at the value itself: gt/lt fail there, ge/le hold.
            return {"field": {"path": path, ("gt", "ge", "lt", "le")[mode % 4]: value}}
        return {"field": {"path": path, "gt": 0}}

    # Indices, not sampled_from: hypothesis would print the whole list of leaves in reprs.
    scalars = vocab["leaves"]

    def leaf(n: int) -> tuple[str, str]:
        return scalars[n]

    leaves_of = st.integers(0, len(scalars) - 1).map(leaf)
    leaves = st.one_of(
        st.builds(lambda g: {"topic": g}, st.one_of(globs, st.lists(globs, min_size=1, max_size=3))),
        st.builds(lambda s: {"service": s}, st.lists(st.sampled_from(vocab["services"]), min_size=1, max_size=3)),
        st.builds(lambda e: {"env": e}, st.sampled_from(["prod", "stg", "dev"])),
        st.builds(lambda u: {"users": u}, st.lists(st.sampled_from(vocab["users"]), min_size=1, max_size=3)),
        st.builds(lambda a: {"agent": a}, st.sampled_from(vocab["users"])),
        st.builds(lambda p: {"packages": p}, st.lists(st.sampled_from(vocab["packages"]), min_size=1, max_size=3)),
        st.builds(lambda v: {"field": {"path": "msg.agent", "equals": v}}, st.sampled_from(vocab["users"])),
        st.builds(
            lambda v: {"field": {"path": "msg.update.builds[*].nvr", "in": v}},
            st.lists(st.sampled_from(vocab["nvrs"]), min_size=1, max_size=3),
        ),
        st.builds(lambda v: {"field": {"path": "msg.owner", "equals": v}}, st.sampled_from(vocab["users"])),
        st.builds(lambda p: {"field": {"path": "topic", "matches": p}}, st.sampled_from(vocab["pieces"])),
        st.builds(regex, leaves_of, st.integers(0, 40), st.integers(0, 6)),
        st.builds(equality, leaves_of, st.integers(0, 8), leaves_of),
        st.builds(
            lambda s: {"severity": s},
            st.sampled_from(["info", ["debug", "error"], {"ge": "warning"}, {"lt": "info"}, {"le": 20}, 30]),
        ),
    )

    def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in items:
            for key, value in item.items():
                out.setdefault(key, value)
        return out

    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.builds(merge, st.lists(children, min_size=1, max_size=3)),
            st.builds(lambda c: {"all": c}, st.lists(children, min_size=1, max_size=3)),
            st.builds(lambda c: {"any": c}, st.lists(children, min_size=1, max_size=3)),
            st.builds(lambda c: {"not": c}, children),
        ),
        max_leaves=6,
    )


@pytest.fixture(scope="module")
def sample_pairs(samples: list[dict[str, Any]]) -> list[tuple[Message, Meta]]:
    return sample_messages(samples)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_index_matches_brute_force(data: st.DataObject, sample_pairs: list[tuple[Message, Meta]]) -> None:
    """Whatever rules users write, the indexed matcher routes every sample exactly as testing every rule would."""
    vocab = vocabulary(sample_pairs)
    matches = data.draw(st.lists(condition_strategy(vocab), min_size=1, max_size=25))
    rules = [{"name": f"r{n}", "match": m, "deliver": [{"via": "out"}]} for n, m in enumerate(matches)]
    doc = LocatedDocument(file="<generated>", data={"rules": rules})
    ruleset = RuleSet.from_documents(
        [doc], {"out": load_config("<c>", "accounts: {out: {backend: console}}").accounts["out"]}
    )
    for message, m in sample_pairs:
        indexed = [r.rule.name for r in ruleset.matching(message, m)]
        brute = [r.rule.name for r in ruleset.matching_brute_force(message, m)]
        assert indexed == brute, json.dumps({"topic": message.topic, "rules": matches})


def test_index_skips_rules_that_cannot_match(sample_pairs: list[tuple[Message, Meta]]) -> None:
    """Per-user rules are filed by what they need, so a message only wakes the few rules that could match."""
    accounts = load_config("<c>", "accounts: {out: {backend: console}}").accounts
    rules = []
    for n in range(2000):
        rules.append({"name": f"u{n}", "match": {"users": f"user{n}"}, "deliver": [{"via": "out"}]})
        rules.append({"name": f"p{n}", "match": {"packages": [f"pkg{n}"]}, "deliver": [{"via": "out"}]})
        rules.append(
            {
                "name": f"t{n}",
                "match": {"topic": "*.buildsys.build.state.change", "agent": f"user{n}"},
                "deliver": [{"via": "out"}],
            }
        )
    rules.append({"name": "firehose", "match": {"not": {"topic": "*.buildsys.tag"}}, "deliver": [{"via": "out"}]})
    ruleset = RuleSet.from_documents([LocatedDocument(file="<g>", data={"rules": rules})], accounts)
    # The firehose is a `not:` around a suffix glob: filed under what excludes it, not residual.
    assert ruleset.index.stats()["residual"] == 0
    assert ruleset.index.stats()["negated"] == 1
    message = msg("org.fedoraproject.prod.buildsys.build.state.change")
    candidates = ruleset.index.candidates(message, meta(agent="user7", usernames=("user7",), packages=("pkg9",)))
    names = sorted(ruleset.rules[n].rule.name for n in candidates)
    assert names == ["firehose", "p9", "t7", "u7"]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    """A tiny rule file whose YAML aliases expand to a billion values is refused instead of eating the daemon's memory."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    write(tmp_path, "bomb.yaml", "\n".join(levels) + "\nrules: []\n")
    write(
        tmp_path,
        "fine.yaml",
        "rules: [{name: r, match: &m {service: x}, deliver: [{via: out}]}, {name: s, match: *m, deliver: [{via: mail}]}]\n",
    )
    [problem] = problems(tmp_path)
    assert problem.startswith("bomb.yaml:1:1: rule file expands to ")
    assert problem.endswith("values through YAML aliases, the limit is 2000000")


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    """A pathologically nested rule file is an error naming the file, not a crash."""
    write(tmp_path, "deep.yaml", "rules: " + "[" * 5000 + "]" * 5000 + "\n")
    found = problems(tmp_path)
    assert found == ["deep.yaml:1:1: rule file is nested too deeply"]


def test_every_rule_shape_is_found_through_the_index() -> None:
    """Globs of any shape, typed field equality, regexes, `not:` and `any:` are indexed: none is tested on every message."""
    accounts = load_config("<c>", "accounts: {out: {backend: console}}").accounts
    shapes: dict[str, Any] = {
        "both ends wild": {"topic": "*.bodhi.update.*"},
        "wild in the middle": {"topic": "org.*.copr.build.*"},
        "several stars": {"topic": "*.pagure.*.comment.*"},
        "number equality": {"field": {"path": "msg.new", "equals": 3}},
        "boolean equality": {"field": {"path": "msg.flag", "equals": True}},
        "unanchored regex": {"field": {"path": "msg.comment", "matches": "\\bralph\\b"}},
        "anchored regex": {"field": {"path": "msg.name", "matches": "^eclipse-"}},
        "exists": {"field": {"path": "msg.update.alias", "exists": True}},
        "not around a glob": {"not": {"topic": "*.buildsys.repo.*"}},
        "any of indexed": {"any": [{"users": "ralph"}, {"packages": "kernel"}]},
        "number bound": {"field": {"path": "msg.new", "ge": 2}},
        "severity bound": {"severity": {"ge": "warning"}},
        "exists false": {"field": {"path": "msg.update", "exists": False}},
    }
    rules = [{"name": name, "match": match, "deliver": [{"via": "out"}]} for name, match in shapes.items()]
    ruleset = RuleSet.from_documents([LocatedDocument(file="<g>", data={"rules": rules})], accounts)
    assert ruleset.residual_rules() == []
    build = msg("org.fedoraproject.prod.buildsys.build.state.change", {"new": 1, "name": "eclipse-ptp", "flag": False})
    woken = {ruleset.rules[n].rule.name for n in ruleset.index.candidates(build, meta(usernames=("ralph",)))}
    assert woken == {"anchored regex", "not around a glob", "any of indexed", "exists false"}
    repo = msg("org.fedoraproject.prod.buildsys.repo.done", {"comment": "thanks ralph!", "new": 3})
    woken = {ruleset.rules[n].rule.name for n in ruleset.index.candidates(repo, meta())}
    assert woken == {"unanchored regex", "number equality", "number bound", "exists false"}
