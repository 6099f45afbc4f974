"""The ``severity`` match key on both buses: fedora-messaging's level, fedmsg messages count as info."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from fedmsg_notify.bus.amqp import decode_amqp
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError
from fedmsg_notify.matching.rules import RuleSet
from fedmsg_notify.meta.engine import Meta

META = Meta(title="", subtitle="", link=None, icon=None, agent=None, usernames=(), packages=())


def ruleset(tmp_path: Path, match: str) -> RuleSet:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "a.yaml").write_text(
        textwrap.dedent(f"rules:\n  - name: loud\n    match: {match}\n    deliver: [{{via: out}}]\n")
    )
    config = load_config(tmp_path / "config.yaml", "accounts: {out: {backend: console}}\nrules: [rules]\n")
    return RuleSet.load(config.rule_paths, config.accounts)


def amqp(severity: int) -> Message:
    return decode_amqp(
        "org.fedoraproject.prod.koji.build.failed",
        json.dumps({"x": 1}).encode(),
        message_id=f"id-{severity}",
        headers={"fedora_messaging_severity": severity},
        content_type="application/json",
        received=1.0,
    )


FEDMSG = Message.from_envelope({"topic": "org.fedoraproject.prod.bodhi.x", "msg": {}, "timestamp": 1, "msg_id": "f"})


@pytest.mark.parametrize(
    ("match", "matching"),
    [
        ("{severity: {ge: warning}}", {30, 40}),
        ("{severity: error}", {40}),
        ("{severity: [debug, info]}", {10, 20, "fedmsg"}),
        ("{severity: {lt: 30}}", {10, 20, "fedmsg"}),
        ("{not: {severity: info}}", {10, 30, 40}),
    ],
)
def test_severity_matches_on_both_buses(tmp_path: Path, match: str, matching: set[object]) -> None:
    rules = ruleset(tmp_path, match)
    got: set[object] = {level for level in (10, 20, 30, 40) if rules.routes(amqp(level), META)}
    if rules.routes(FEDMSG, META):
        got.add("fedmsg")
    assert got == matching


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("{severity: loud}", "severity 'loud' is not one of debug, info, warning, error"),
        ("{severity: {above: warning}}", "expected one of gt, ge, lt, le"),
    ],
)
def test_a_bad_severity_names_file_and_line(tmp_path: Path, match: str, expected: str) -> None:
    with pytest.raises(ProblemsError) as info:
        ruleset(tmp_path, match)
    text = "\n".join(str(p) for p in info.value.problems)
    assert expected in text
    assert "a.yaml:3:" in text, text


def test_explain_says_why_a_severity_did_not_match(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "{severity: {ge: warning}}")
    verdicts = rules.explain(amqp(20), META)
    assert "severity ge warning: got info" in json.dumps([str(v) for v in verdicts])
