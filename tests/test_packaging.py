"""Packaging: `pip install .` ships every module, template, rule and data file under one namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def expected_files() -> set[str]:
    """Where each source file must land in the wheel (setup.py's package_dir mapping)."""
    mapping = {
        "notifier": "fedmsg_notify",
        "backends": "fedmsg_notify/backends",
        "templates": "fedmsg_notify/templates",
        "rules": "fedmsg_notify/example_rules",
    }
    wanted: set[str] = set()
    for source, target in mapping.items():
        for path in (ROOT / source).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".j2", ".yaml", ".jsonl", ".service", ".svg"}:
                wanted.add(f"{target}/{path.relative_to(ROOT / source).as_posix()}")
    return wanted


def test_wheel_holds_everything_under_fedmsg_notify(tmp_path: Path) -> None:
    """A module or template missing from setup.py would work in a checkout and break for every installed user."""
    # Build from a copy: setuptools reuses a checkout's build/ directory, whose stale
    # files would hide a package missing from setup.py.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", "build", ".git", "*.egg-info", "__pycache__", ".*cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("fedmsg_notify-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = expected_files() - names
    assert not missing, sorted(missing)
    # No generic top-level names (backends, notifier, rules) land in site-packages.
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith((".dist-info", ".data"))} == {"fedmsg_notify"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fedmsg-notify = fedmsg_notify.commands.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
