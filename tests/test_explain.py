"""``fedmsg-notify explain`` on real samples: verdicts, exact rendered output, JSON lines, and nothing sent."""

from __future__ import annotations

import io
import json
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.commands.cli import main
from fedmsg_notify.config.model import Config, load_config
from fedmsg_notify.matching.rules import RuleSet
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.render.renderer import Renderer

BUILD = "buildsys.TestKojiBuildStateChangeStart"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port the config's IRC and SMTP accounts point at: explain must never connect to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def config_path(tmp_path: Path, listener: socket.socket) -> Path:
    port = listener.getsockname()[1]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "ralph.yaml").write_text(
        textwrap.dedent(
            """
            me: ralph
            rules:
              - name: my builds
                match:
                  topic: "*.buildsys.build.state.change"
                  field: {path: msg.owner, equals: $me}
                deliver:
                  - {via: libera, to: "#ralph"}
                  - {via: mail, to: ralph@example.org, digest: {every: 1h, max: 100}}
              - name: failed builds
                match: {field: {path: msg.new, in: [3]}}
                deliver:
                  - {via: libera, to: "#ralph"}
              - name: everything
                match: {}
                deliver:
                  - {via: libera, to: "#ralph"}
                  - {via: mail, to: list@example.org}
            """
        ),
        encoding="utf-8",
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            accounts:
              libera: {{backend: irc, server: "irc://127.0.0.1:{port}", nick: bot}}
              mail: {{backend: email, smtp: "smtp://127.0.0.1:{port}", from: "Notify <n@example.org>"}}
            rules: [rules]
            """
        ),
        encoding="utf-8",
    )
    return path


def sample(samples: list[dict[str, Any]], sample_id: str) -> dict[str, Any]:
    return next(s for s in samples if s["id"] == sample_id)


def expected_renders(config: Config, envelope: dict[str, Any]) -> dict[str, dict[str, str]]:
    """What the renderer itself produces for each destination: explain must show exactly this."""
    message = Message.from_envelope(envelope)
    meta = MetaEngine(config.service_paths).compute(message)
    renderer = Renderer(config.template_paths)
    ruleset = RuleSet.load(config.rule_paths, config.accounts)
    return {
        route.destination.key: renderer.render(config.accounts[route.destination.account].backend, message, meta, route)
        for route in ruleset.routes(message, meta)
    }


def assert_nothing_connected(listener: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_explain_text_shows_verdicts_and_exact_deliveries(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    config_path: Path,
    samples: list[dict[str, Any]],
    listener: socket.socket,
) -> None:
    """For ralph's koji build, explain says which rules matched, why the other did not, and what each destination gets."""
    envelope = sample(samples, BUILD)["message"]
    message_file = tmp_path / "build.json"
    message_file.write_text(json.dumps(envelope, indent=2), encoding="utf-8")
    code = main(["explain", "-c", str(config_path), str(message_file)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    rules_file = tmp_path / "rules" / "ralph.yaml"
    assert lines[0] == "== org.fedoraproject.prod.buildsys.build.state.change  (msg_id " + lines[0].split("msg_id ")[1]
    assert "  agent: ralph" in lines and "  packages: eclipse-ptp" in lines
    start = lines.index("rules:")
    assert lines[start + 1 : start + 4] == [
        f"  matched 'my builds' ({rules_file}:4)",
        f"  no      'failed builds' ({rules_file}:11): field msg.new in [3]: got 0",
        f"  matched 'everything' ({rules_file}:15)",
    ]
    renders = expected_renders(load_config(config_path), envelope)
    deliveries = lines[lines.index("deliveries:") + 1 :]
    assert deliveries[0] == "  libera:#ralph  (irc, rule 'my builds')"
    # What the IRC backend would send: the rendered line plus how old the (2012) build is.
    assert deliveries[1].startswith(f"    line: {renders['libera:#ralph']['line']} (")
    assert deliveries[1].endswith(" years ago)")
    assert deliveries[2] == "  mail:ralph@example.org  (email, rule 'my builds')"
    assert deliveries[3] == "    would be added to the digest (every 1h, at most 100 messages); alone it would read:"
    assert f"    subject: {renders['mail:ralph@example.org']['subject']}" in deliveries
    assert "  mail:list@example.org  (email, rule 'everything')" in deliveries
    assert sum(1 for line in deliveries if line.startswith("  libera:")) == 1
    assert_nothing_connected(listener)


def test_explain_json(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    config_path: Path,
    samples: list[dict[str, Any]],
    listener: socket.socket,
) -> None:
    """--json gives machines the meta, every verdict and the exact rendered parts per destination."""
    envelope = sample(samples, BUILD)["message"]
    message_file = tmp_path / "build.json"
    message_file.write_text(json.dumps(envelope), encoding="utf-8")
    code = main(["explain", "-c", str(config_path), str(message_file), "--json"])
    [line] = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert code == 0
    assert result["topic"] == envelope["topic"]
    assert result["meta"]["usernames"] == ["ralph"] and result["meta"]["packages"] == ["eclipse-ptp"]
    assert [(v["rule"], v["matched"], v["failed"]) for v in result["rules"]] == [
        ("my builds", True, None),
        ("failed builds", False, "field msg.new in [3]: got 0"),
        ("everything", True, None),
    ]
    # `match: {}` is the one rule the index cannot narrow down.
    assert result["index"] == {"rules": 3, "residual": 1}
    renders = expected_renders(load_config(config_path), envelope)
    assert [(d["destination"], d["rule"], d["rendered"]) for d in result["deliveries"]] == [
        ("libera:#ralph", "my builds", renders["libera:#ralph"]),
        ("mail:ralph@example.org", "my builds", renders["mail:ralph@example.org"]),
        ("mail:list@example.org", "everything", renders["mail:list@example.org"]),
    ]
    assert result["deliveries"][1]["digest"] == {"every_seconds": 3600, "max": 100}
    assert set(result["deliveries"][1]["rendered"]) == {"subject", "text", "html"}
    # "sent" is what the backend would put on the wire: the IRC line within 512 bytes with its age.
    irc_sent = result["deliveries"][0]["sent"]["line"]
    assert irc_sent.startswith(renders["libera:#ralph"]["line"]) and irc_sent.endswith(" years ago)")
    assert len(irc_sent.encode()) < 512
    assert result["deliveries"][1]["sent"] == result["deliveries"][1]["rendered"]
    assert_nothing_connected(listener)


def test_explain_stdin_reports_bad_lines_and_continues(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config_path: Path,
    samples: list[dict[str, Any]],
) -> None:
    """A day of archived messages is explained in one run; broken lines are named by number and the rest still explained."""
    good = [json.dumps(s) for s in samples[:5]] + [json.dumps(samples[5]["message"])]
    lines = [*good[:2], "{not json", *good[2:4], '{"topic": "x"}', "", *good[4:]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code = main(["explain", "-c", str(config_path), "-", "--json"])
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert [r["topic"] for r in results] == [s["message"]["topic"] for s in samples[:6]]
    errors = captured.err.splitlines()
    assert any(line.startswith("<stdin>:3: invalid JSON:") for line in errors)
    assert any(line.startswith("<stdin>:6: not a fedmsg message (missing-fields") for line in errors)


def test_explain_every_sample(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config_path: Path,
    samples: list[dict[str, Any]],
) -> None:
    """Every bundled sample is explained without crashing; the few the daemon would drop are reported as such."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(json.dumps(s) for s in samples) + "\n"))
    code = main(["explain", "-c", str(config_path), "-"])
    captured = capsys.readouterr()
    explained = captured.out.count("\n== ") + captured.out.startswith("== ")
    dropped = captured.err.count("the daemon would drop it")
    assert explained + dropped == len(samples)
    # Exactly the samples recorded without an envelope timestamp are dropped, and the exit code says so.
    undated = [n for n, sample in enumerate(samples, 1) if "timestamp" not in sample["message"]]
    dropped_lines = [int(line.split(":")[1]) for line in captured.err.splitlines() if "the daemon would drop it" in line]
    assert dropped_lines == undated, captured.err
    assert code == (1 if undated else 0)
    assert "Traceback" not in captured.err
