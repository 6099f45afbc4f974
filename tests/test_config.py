"""Configuration: strict validation, every error at file:line:col, fedmsg.d import."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from fedmsg_notify.backends import backend_names
from fedmsg_notify.backends.console import ConsoleBackend
from fedmsg_notify.commands.cli import main
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ProblemsError) as caught:
        load_config(path)
    return [str(p).replace(str(path), "config.yaml") for p in caught.value.problems]


def test_good_config_is_loaded_with_paths_resolved(tmp_path: Path) -> None:
    """A valid file yields endpoints, accounts with their backend, and paths relative to the file."""
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            bus:
              endpoints: [tcp://127.0.0.1:9940, "tcp://bus.example.org:9941"]
              subscribe: [org.fedoraproject.]
            accounts:
              out: {backend: console, rate: 5, burst: 2}
            rules: [rules.d, /abs/rules]
            templates: [~/tpl]
            state: state/state.db
            """
        )
    )
    config = load_config(path)
    assert config.endpoints == ("tcp://127.0.0.1:9940", "tcp://bus.example.org:9941")
    assert config.subscribe == ("org.fedoraproject.",)
    assert config.accounts["out"].backend is ConsoleBackend
    assert config.accounts["out"].options.rate == 5
    assert config.rule_paths == (tmp_path / "rules.d", Path("/abs/rules"))
    assert config.template_paths == (Path("~/tpl").expanduser(),)
    assert config.state_path == tmp_path / "state" / "state.db"


def test_empty_config_uses_defaults(tmp_path: Path) -> None:
    """An empty file is valid: subscribe to everything, shipped rules, no accounts."""
    path = tmp_path / "config.yaml"
    path.write_text("")
    config = load_config(path)
    assert config.subscribe == ("",)
    assert config.accounts == {}
    assert config.rule_paths[0].name == "rules"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "bus:\n  endpoints: [tcp://127.0.0.1:9940]\n  subscrbe: [org.]\n",
            ["config.yaml:3:3: unknown key 'subscrbe' in bus; did you mean 'subscribe'?"],
        ),
        (
            "templats: [a]\n",
            ["config.yaml:1:1: unknown key 'templats' in top level; did you mean 'templates'?"],
        ),
        (
            "bus:\n  endpoints:\n    - tcp://127.0.0.1:1\n    - nope\n",
            ["config.yaml:4:7: bus.endpoints.1: endpoint 'nope' is not a ZeroMQ address like tcp://host:port"],
        ),
        (
            "accounts:\n  a: {backend: consol}\n",
            [
                "config.yaml:2:16: unknown backend 'consol' for account 'a' "
                "(expected one of: " + ", ".join(backend_names()) + ")"
                "; did you mean 'console'?"
            ],
        ),
        (
            "accounts:\n  out:\n    backend: console\n    colour: red\n",
            ["config.yaml:4:5: unknown key 'colour' in accounts.out (expected one of: backend, burst, label, max_backlog, max_backlog_age, rate)"],
        ),
        ("accounts:\n  out: {rate: 1}\n", ["config.yaml:2:8: account 'out' needs 'backend: <one of "]),
        ("state: 5\n", ["config.yaml:1:8: state: expected a valid string, got 5"]),
        ("bus: {endpoints: [tcp://a:1]\n", ["config.yaml:1:6: invalid YAML: the { here is never closed (the file ends before its })"]),
        ("bus: {}\nbus: {}\n", ["config.yaml:2:1: duplicate key 'bus'"]),
        ("bus:\n  max_message_bytes: 10\n", ["config.yaml:2:22: bus.max_message_bytes: expected greater than or equal"]),
    ],
)
def test_bad_config_names_file_line_column(tmp_path: Path, text: str, expected: list[str]) -> None:
    """Each kind of mistake is reported at its position with what was expected."""
    got = problems_of(tmp_path, text)
    assert len(got) == len(expected), got
    for line, want in zip(got, expected, strict=True):
        assert line.startswith(want), (line, want)


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    """One run lists every problem, top to bottom, not just the first."""
    got = problems_of(
        tmp_path,
        """\
        bus: {subscrbe: []}
        accounts:
          a: {backend: consol}
          b: {backend: console, colour: red}
        state: 5
        """,
    )
    assert [line.split(": ")[0] for line in got] == [
        "config.yaml:1:7",
        "config.yaml:3:16",
        "config.yaml:4:25",
        "config.yaml:5:8",
    ]


def test_fedmsg_d_directory_endpoints_are_merged(tmp_path: Path) -> None:
    """Endpoints of an existing fedmsg.d are used, files deep-merged in sorted order like fedmsg does."""
    fedmsg_d = tmp_path / "fedmsg.d"
    fedmsg_d.mkdir()
    (fedmsg_d / "10-base.py").write_text(
        "config = dict(endpoints={'bodhi.app01': ['tcp://127.0.0.1:3001'], 'koji.hub': ['tcp://127.0.0.1:3002']},"
        " environment='prod')\n"
    )
    (fedmsg_d / "20-override.py").write_text(
        "import socket\nhostname = socket.gethostname()\n"
        "config = dict(endpoints={'koji.hub': ['tcp://127.0.0.1:3003']})\n"
    )
    (fedmsg_d / "notes.txt").write_text("not python, ignored")
    path = tmp_path / "config.yaml"
    path.write_text(f"bus:\n  endpoints: [tcp://127.0.0.1:3000]\n  fedmsg_config: {fedmsg_d}\n")
    config = load_config(path)
    assert config.endpoints == ("tcp://127.0.0.1:3000", "tcp://127.0.0.1:3001", "tcp://127.0.0.1:3003")
    assert config.fedmsg["environment"] == "prod"


def test_broken_fedmsg_d_file_is_reported(tmp_path: Path) -> None:
    """A fedmsg.d file that fails to execute is named in the error, at the config key that pulls it in."""
    fedmsg_d = tmp_path / "fedmsg.d"
    fedmsg_d.mkdir()
    (fedmsg_d / "bad.py").write_text("config = dict(\n")
    got = problems_of(tmp_path, f"bus:\n  fedmsg_config: {fedmsg_d}\n")
    assert got[0].startswith("config.yaml:2:18: ")
    assert "bad.py: cannot execute: SyntaxError" in got[0]


def test_missing_config_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-c` naming a file that does not exist exits 1 and says so."""
    missing = tmp_path / "nope.yaml"
    assert main(["tail", "-c", str(missing)]) == 1
    assert f"{missing}:1:1: configuration file does not exist" in capsys.readouterr().err


def test_config_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-c beats $FEDMSG_NOTIFY_CONFIG, which beats the system and user files."""
    from fedmsg_notify.config.model import find_config_file

    env_file = tmp_path / "env.yaml"
    monkeypatch.setenv("FEDMSG_NOTIFY_CONFIG", str(env_file))
    assert find_config_file("explicit.yaml") == Path("explicit.yaml")
    assert find_config_file(None) == env_file
