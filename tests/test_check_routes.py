"""`check` reports what would otherwise only fail at delivery time, at the key's file:line:col."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fedmsg_notify.commands.cli import main


def write(tmp: Path, rules: str, accounts: str) -> Path:
    (tmp / "rules.yaml").write_text(textwrap.dedent(rules))
    config = tmp / "config.yaml"
    config.write_text(f"accounts:\n{accounts}rules: [{tmp / 'rules.yaml'}]\nstate: {tmp / 's.db'}\n")
    return config


ACCOUNTS = """\
  irc: {backend: irc, server: 'irc://127.0.0.1:6667', nick: bot}
  mail: {backend: email, smtp: 'maildir:/tmp/box', from: 'a@example.org'}
"""


def test_missing_template_bad_address_and_bad_channel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    config = write(
        tmp_path,
        """\
        rules:
          - name: one
            match: {}
            deliver:
              - {via: irc, to: fedora-devel#x, template: irc/nope.j2}
              - {via: mail, to: "not an address", digest: {every: 1h, template: email/gone.j2}}
              - {via: irc, to: "#fine"}
              - {via: irc, to: somenick}
              - {via: mail, to: "Me <me@example.org>", template: email/default.j2}
        """,
        ACCOUNTS,
    )
    assert main(["check", "-c", str(config)]) == 1
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if line.startswith(str(rules))]
    assert len(problems) == 4, lines
    assert problems[0].startswith(f"{rules}:5:24: 'fedora-devel#x' is neither an IRC channel (starting with # or &)")
    assert problems[1].startswith(f"{rules}:5:50: template 'irc/nope.j2' not found (searched ")
    assert problems[2].startswith(f"{rules}:6:25: 'to' must be one mail address like 'Name <user@example.org>'")
    assert problems[3].startswith(f"{rules}:6:73: template 'email/gone.j2' not found")
    assert lines[-1] == "4 problems found"


def test_missing_backend_library_is_a_warning_naming_the_extra(tmp_path: Path) -> None:
    """The irc library hidden from the import system: a warning at the account, the check still passes."""
    config = write(tmp_path, "rules:\n  - {name: a, match: {}, deliver: [{via: irc, to: '#x'}]}\n", ACCOUNTS)
    script = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'irc' or name.startswith('irc.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from fedmsg_notify.commands.cli import main\n"
        f"raise SystemExit(main(['check', '-c', {str(config)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    [warning] = [line for line in result.stdout.splitlines() if "warning:" in line]
    assert warning.startswith(f"{config}:2:3: warning: account 'irc' (irc) needs irc, which is not installed")
    assert "pip install '.[irc]'" in warning
    assert result.stdout.splitlines()[-1].startswith("OK:")
