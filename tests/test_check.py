"""``fedmsg-notify check`` on directories of good and bad fixture files, with the exact expected messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from fedmsg_notify.commands.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "check"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["check", *args])
    return code, capsys.readouterr().out.splitlines()


def test_good_files_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid config with rules using every key and operator passes with a one-line summary."""
    config = FIXTURES / "good" / "config.yaml"
    code, lines = check(capsys, "-c", str(config))
    assert lines == [f"OK: 4 rules in 2 files, 3 accounts; templates and service files valid ({config})"]
    assert code == 0


def test_bad_files_report_every_problem_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    """Every mistake in every rule file is printed as file:line:col with a hint, so a user can fix them all from one run."""
    base = FIXTURES / "bad"
    expected = (base / "expected.txt").read_text(encoding="utf-8").replace("{dir}", str(base.resolve())).splitlines()
    code, lines = check(capsys, "-c", str(base / "config.yaml"))
    assert code == 1
    assert [line for line in lines if "/rules/" in line] == expected
    # Templates are checked too (their wording belongs to the renderer): the broken one is named with its line.
    assert any(line.startswith(f"{base.resolve()}/templates/console/default.j2:1:") for line in lines)
    assert lines[-1] == f"{len(lines) - 1} problems found"


def test_bad_config_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelled config key is reported with its position and a suggestion, and nothing else is attempted."""
    config = FIXTURES / "badconfig" / "config.yaml"
    code, lines = check(capsys, "-c", str(config))
    assert lines == [
        f"{config}:1:1: unknown key 'acounts' in top level; did you mean 'accounts'?",
        "1 problem in the configuration",
    ]
    assert code == 1


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Naming a config file that does not exist says so instead of silently using defaults."""
    code, lines = check(capsys, "-c", str(tmp_path / "nope.yaml"))
    assert lines == [f"{tmp_path}/nope.yaml:1:1: configuration file does not exist", "1 problem in the configuration"]
    assert code == 1


def test_embedded_defaults_pass(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no config file at all, the embedded defaults and shipped rules check clean."""
    monkeypatch.delenv("FEDMSG_NOTIFY_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if Path("/etc/fedmsg-notify/config.yaml").exists():
        pytest.skip("a system config exists on this machine")
    code, lines = check(capsys)
    assert lines == ["OK: 5 rules in 3 files, 3 accounts; templates and service files valid (<embedded defaults>)"]
    assert code == 0


def test_check_never_prints_secrets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Passwords and tokens from the accounts never appear in check's output, whether it passes or fails."""
    secrets = {"irc-pass": "hunter2-server", "sasl-pass": "hunter2-sasl", "token": "tok3n-s3cret"}
    for name, value in secrets.items():
        (tmp_path / name).write_text(value + "\n", encoding="utf-8")
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent(
            f"""
            accounts:
              libera:
                backend: irc
                server: "irc://127.0.0.1:6667"
                nick: bot
                password_file: {tmp_path}/irc-pass
                sasl: {{username: bot, password_file: {tmp_path}/sasl-pass}}
              toot: {{backend: mastodon, instance: "https://example.org", token_file: {tmp_path}/token}}
            rules: [rules]
            """
        ),
        encoding="utf-8",
    )
    (tmp_path / "rules").mkdir()
    rule = tmp_path / "rules" / "r.yaml"
    rule.write_text(
        "rules: [{name: r, match: {}, deliver: [{via: libera, to: '#c'}, {via: toot}]}]\n", encoding="utf-8"
    )
    code, good = check(capsys, "-c", str(tmp_path / "config.yaml"))
    assert code == 0
    rule.write_text("rules: [{name: r, match: {}, deliver: [{via: libra, to: '#c'}, {via: tot}]}]\n", encoding="utf-8")
    code, bad = check(capsys, "-c", str(tmp_path / "config.yaml"))
    assert code == 1
    assert bad[0] == f"{rule}:1:46: undefined account 'libra'; did you mean 'libera'? (defined: libera, toot)"
    output = "\n".join(good + bad)
    for value in secrets.values():
        assert value not in output


RESIDUAL_RULES = """\
rules:
  - name: bodhi updates
    match: {topic: "*.bodhi.update.*"}
    deliver: [{via: out}]
  - name: everything
    match: {}
    deliver: [{via: out}]
  - name: owners with an a or a b
    match:
      field: {path: msg.owner, matches: "a|b"}
    deliver: [{via: out}]
  - name: not my copr builds
    match:
      not: {topic: "*.copr.build.*"}
    deliver: [{via: out}]
"""


def residual_config(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RESIDUAL_RULES, encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text("accounts: {out: {backend: console}}\nrules: [rules]\n", encoding="utf-8")
    return config


def test_check_counts_residual_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """check says how many rules the index cannot narrow down (tested for every message), and still passes."""
    config = residual_config(tmp_path)
    code, lines = check(capsys, "-c", str(config))
    assert code == 0
    assert lines == [
        f"OK: 4 rules in 1 files (2 residual: tested for every message), 1 account; "
        f"templates and service files valid ({config})"
    ]


def test_check_strict_refuses_residual_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """check --strict names each residual rule at its file:line:col; globs and `not:` around a glob are not residual."""
    config = residual_config(tmp_path)
    code, lines = check(capsys, "-c", str(config), "--strict")
    rules = tmp_path / "rules" / "r.yaml"
    assert code == 1
    assert lines == [
        f"{rules}:5:5: rule 'everything' is residual: no condition narrows which messages it sees, so it is "
        "tested for every message (add a topic, service, user, package or field equality, or drop --strict)",
        f"{rules}:8:5: rule 'owners with an a or a b' is residual: no condition narrows which messages it sees, "
        "so it is tested for every message (add a topic, service, user, package or field equality, or drop --strict)",
        "2 problems found",
    ]
