"""The config search order through the CLI: -c, $FEDMSG_NOTIFY_CONFIG, /etc, ~/.config, embedded defaults.

Each level is present in turn together with every level below it; ``check`` names the file
it loaded, so the winner is read from the program's own output. The system path is
redirected into the test's directory (the machine's /etc is never touched).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fedmsg_notify.commands.cli import main
from fedmsg_notify.config import model

LEVELS = ["-c", "env", "system", "user"]


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("accounts:\n  out: {backend: console}\nrules: []\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("top", [*LEVELS, "embedded"])
def test_the_highest_present_level_wins(
    top: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With this level and all lower ones present, this level's file is the one loaded."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("FEDMSG_NOTIFY_CONFIG", raising=False)
    system = tmp_path / "etc" / "fedmsg-notify" / "config.yaml"
    monkeypatch.setattr(model, "SYSTEM_CONFIG", system)
    files = {
        "-c": tmp_path / "explicit.yaml",
        "env": tmp_path / "from-env.yaml",
        "system": system,
        "user": home / ".config" / "fedmsg-notify" / "config.yaml",
    }
    present = LEVELS[LEVELS.index(top):] if top != "embedded" else []
    for level in present:
        write(files[level])
    if "env" in present:
        monkeypatch.setenv("FEDMSG_NOTIFY_CONFIG", str(files["env"]))
    args = ["check", *(["-c", str(files["-c"])] if "-c" in present else [])]
    code = main(args)
    out = capsys.readouterr().out.strip()
    assert code == 0, out
    expected = "<embedded defaults>" if top == "embedded" else str(files[top])
    assert out.endswith(f"({expected})"), out
