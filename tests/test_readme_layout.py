"""The README's "How the code is laid out" tree names the folders and modules that exist, and all of them.

A newcomer reads that tree to find where a stage lives; a module renamed, split or added
without the tree following would send them to a file that is not there, or hide one.
Folders whose entry names no file (``meta/``, ``matching/``) are described, not listed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("notifier", "backends")
PY_NAME = re.compile(r"(?<![\w/])([A-Za-z_][\w]*\.py)\b")


def _tree() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### How the code is laid out", 1)[1]
    block = section.split("```", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def _entries() -> dict[Path, set[str]]:
    """Folder (relative to the checkout) → the file names the tree lists in it."""
    entries: dict[Path, set[str]] = {}
    top: Path | None = None
    current: Path | None = None
    for line in _tree():
        indent = len(line) - len(line.lstrip(" "))
        head, _, rest = line.strip().partition(" ")
        if indent == 0:
            top = current = Path(head.rstrip("/"))
            entries.setdefault(top, set())
            names = rest
        elif indent == 2:
            assert top is not None, line
            if head.endswith("/"):
                current = top / head.rstrip("/")
                entries.setdefault(current, set())
                names = rest
            else:
                # Modules (and data/) of the top folder itself, on one line or with a note.
                current = top
                entries[top].update(n.rstrip(",") for n in line.split() if n.rstrip(",").endswith("/"))
                names = line
        else:
            names = line
        assert current is not None, line
        entries[current].update(PY_NAME.findall(names))
    return entries


def test_the_tree_is_parsed() -> None:
    # Guards the test itself: a tree the parser misread would make the checks below vacuous.
    entries = _entries()
    assert {Path("notifier"), Path("backends"), Path("notifier/store"), Path("backends/irc")} <= set(entries)
    assert "sqlite.py" in entries[Path("notifier/store")]
    assert "backend.py" in entries[Path("notifier")]


def test_every_file_the_tree_names_exists() -> None:
    missing = [
        str(folder / name) for folder, names in _entries().items() for name in names if not (ROOT / folder / name).exists()
    ]
    assert missing == []


def test_every_package_is_in_the_tree() -> None:
    entries = _entries()
    packages = [path.parent.relative_to(ROOT) for top in TOPS for path in (ROOT / top).glob("*/__init__.py")]
    named = set(entries) | {folder / name.rstrip("/") for folder, names in entries.items() for name in names}
    assert sorted(str(p) for p in packages if p not in named) == []


def test_every_module_of_a_listed_folder_is_in_the_tree() -> None:
    """A folder whose entry lists files lists all of them (``__init__.py`` may go unnamed)."""
    unlisted = []
    for folder, names in _entries().items():
        if not names:
            continue
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name not in names and path.name not in ("__init__.py", "__main__.py"):
                unlisted.append(str(folder / path.name))
    assert unlisted == []
