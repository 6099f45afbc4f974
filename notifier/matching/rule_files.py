"""Rule files from disk: parsed fast with positions, compiled once per version of the file.

Parsing uses libyaml (``yaml.CSafeLoader``) to *compose* nodes, which carry their marks,
and builds the plain data from them directly, interning the strings that thousands of
files repeat; positions are looked up in the node tree only when something asks (a
rule's line, an error). A file the fast path does not cover — any problem at all, a
duplicate or non-string key, a merge key, an unknown tag — is redone by the exact
pure-Python loader (:func:`~fedmsg_notify.config.yaml_positions.load_located`), so
every error reads exactly as it always has.

:class:`CompiledFiles` remembers each file's compiled rules by (path, mtime, size,
inode): a SIGHUP after one file changed recompiles that file alone. A file modified
within a clock tick of being read is compared by content next time ("racy" stamps, as
git does), since two writes in one tick leave the same mtime.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from fedmsg_notify.config.yaml_positions import LocatedDocument, PathKey, Position, Problem, ProblemsError, load_located
from fedmsg_notify.matching.compiled import CompiledRule
from fedmsg_notify.matching.rule_compiler import FileCompiler

log = logging.getLogger(__name__)

# Rule files may come from many users (SPEC "Hostile input"): bound what one file can
# cost at load time and in memory. Fedora's heaviest FMN users had a few hundred rules.
MAX_RULES_PER_FILE: Final = 10_000
MAX_FILE_BYTES: Final = 5 * 1024 * 1024
# YAML aliases let a small file expand into a huge document ("billion laughs").
MAX_EXPANDED_VALUES: Final = 2_000_000

_C_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR: Final = "tag:yaml.org,2002:str"
# Longer strings are rarely repeated between files; interning them would only cost time.
_INTERN_BELOW: Final = 80
# A file whose mtime is this close to (or after) the moment it was read may change again
# without its mtime moving: file systems stamp with a coarse clock.
_RACY_NS: Final = 2_000_000_000


class _Unusual(Exception):
    """The fast path declines this file; the exact loader handles it."""


class NodeDocument(LocatedDocument):
    """A parsed file that finds positions in its composed node tree when asked."""

    __slots__ = ("root",)

    def __init__(self, file: str, data: Any, root: yaml.Node | None) -> None:
        super().__init__(file=file, data=data)
        self.root = root

    def where(self, path: PathKey, *, key: bool = False) -> Position:
        """As :meth:`LocatedDocument.where`: ``path``'s position (its key's), else its nearest ancestor's."""
        node = self.root
        if node is None:
            return Position(self.file, 1, 1)
        key_node: yaml.Node | None = None
        for element in path:
            child: yaml.Node | None = None
            child_key: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == element:
                        child, child_key = v, k
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(element, int) and 0 <= element < len(node.value):
                child = node.value[element]
            if child is None:
                break
            node, key_node = child, child_key
        mark = (key_node if key and key_node is not None else node).start_mark
        return Position(self.file, mark.line + 1, mark.column + 1)


def _construct(node: yaml.Node, loader: Any) -> Any:
    """Plain data from a composed node, for the common subset of YAML (else :class:`_Unusual`).

    Scalars are handled inline in the loops: they are most nodes, and a call each would
    cost more than the rest of the work.
    """
    kind = type(node)
    scalar = yaml.ScalarNode
    intern = sys.intern
    if kind is yaml.MappingNode:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is not scalar or key_node.tag != _STR:
                raise _Unusual("non-string key")
            name = intern(key_node.value)
            if name in out:
                raise _Unusual("duplicate key")
            if type(value_node) is scalar and value_node.tag == _STR:
                value = value_node.value
                out[name] = intern(value) if len(value) < _INTERN_BELOW else value
            else:
                out[name] = _construct(value_node, loader)
        return out
    if kind is yaml.SequenceNode:
        items: list[Any] = []
        for child in node.value:
            if type(child) is scalar and child.tag == _STR:
                value = child.value
                items.append(intern(value) if len(value) < _INTERN_BELOW else value)
            else:
                items.append(_construct(child, loader))
        return items
    if kind is scalar:
        if node.tag == _STR:
            text: str = node.value
            return intern(text) if len(text) < _INTERN_BELOW else text
        constructor = loader.yaml_constructors.get(node.tag)
        if constructor is None:
            raise _Unusual(node.tag)
        return constructor(loader, node)
    raise _Unusual(str(kind))


def fast_document(file: str, text: str) -> NodeDocument:
    """Parse with libyaml; :class:`_Unusual` (or a YAML error) when the exact loader must do it."""
    loader = _C_LOADER(text)
    try:
        root = loader.get_single_node()
        data = None if root is None else _construct(root, loader)
    finally:
        loader.dispose()
    return NodeDocument(file, data, root)


def compile_text(
    file: Path, text: str, accounts: Mapping[str, Any], shared: dict[Any, Any], max_rules: int
) -> tuple[list[CompiledRule], list[Problem]]:
    """One file's rules, or every problem in it (then no rules)."""
    bomb = _alias_expansion(file, text)
    if bomb is not None:
        return [], [bomb]
    try:
        doc: LocatedDocument = fast_document(str(file), text)
    except (yaml.YAMLError, _Unusual, RecursionError, ValueError, TypeError):
        doc = None  # type: ignore[assignment]
    if doc is not None:
        problems: list[Problem] = []
        rules = FileCompiler(doc, accounts, problems, shared).compile(max_rules)
        if not problems:
            return rules, []
    # The exact loader: the positions and wording of every problem, as they always were.
    try:
        doc = load_located(file, text)
    except ProblemsError as exc:
        return [], _yaml_hints(file, exc.problems)
    except RecursionError:
        return [], [Problem(Position(str(file), 1, 1), "rule file is nested too deeply")]
    problems = []
    rules = FileCompiler(doc, accounts, problems, shared).compile(max_rules)
    return ([] if problems else rules), problems


@dataclass(frozen=True, slots=True)
class _Entry:
    stamp: tuple[int, int, int]
    read_ns: int
    text_hash: int
    rules: tuple[CompiledRule, ...]
    problems: tuple[Problem, ...]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while loading.

    A load allocates millions of small objects that all stay alive; each of the
    collector's passes over them would find nothing, and at 100k rules they cost about
    as much as parsing. Reference counting still frees everything meanwhile.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _fingerprint(accounts: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """What compiling depends on besides the file: account names and their backends."""
    return tuple(sorted((name, getattr(account, "backend", None)) for name, account in accounts.items()))


class CompiledFiles:
    """Each rule file's compiled rules (or problems), reused while the file is unchanged."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._settings: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def load(
        self,
        files: Sequence[Path],
        accounts: Mapping[str, Any],
        *,
        max_rules: int = MAX_RULES_PER_FILE,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> tuple[list[CompiledRule], list[Problem], int]:
        """``(rules, problems, files compiled)`` for ``files``, compiling only new or changed ones."""
        with self._lock, collector_paused():
            # The limits and accounts decide what a file compiles to: if they differ, start afresh.
            fingerprint = (_fingerprint(accounts), max_rules, max_bytes)
            old = self._entries if fingerprint == self._settings else {}
            entries: dict[str, _Entry] = {}
            rules: list[CompiledRule] = []
            problems: list[Problem] = []
            shared: dict[Any, Any] = {}
            compiled = 0
            for file in files:
                entry, fresh = self._entry(file, old.get(str(file)), accounts, shared, max_rules, max_bytes)
                compiled += fresh
                if entry is None:
                    continue
                entries[str(file)] = entry
                rules.extend(entry.rules)
                problems.extend(entry.problems)
            self._entries, self._settings = entries, fingerprint
            return rules, problems, compiled

    def _entry(
        self,
        file: Path,
        known: _Entry | None,
        accounts: Mapping[str, Any],
        shared: dict[Any, Any],
        max_rules: int,
        max_bytes: int,
    ) -> tuple[_Entry | None, bool]:
        try:
            info = file.stat()
        except OSError as exc:
            return _failed(file, f"cannot read rule file: {exc}"), False
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        racy = known is not None and info.st_mtime_ns + _RACY_NS >= known.read_ns
        if known is not None and known.stamp == stamp and not racy:
            return known, False
        if info.st_size > max_bytes:
            return _failed(file, f"rule file too large: {info.st_size} bytes, the limit is {max_bytes}"), False
        read_ns = time.time_ns()
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return _failed(file, f"cannot read rule file: {exc}"), False
        if known is not None and known.stamp == stamp and known.text_hash == hash(text):
            return _Entry(stamp, read_ns, known.text_hash, known.rules, known.problems), False
        found, problems = compile_text(file, text, accounts, shared, max_rules)
        return _Entry(stamp, read_ns, hash(text), tuple(found), tuple(problems)), True


def _failed(file: Path, message: str) -> _Entry:
    """A problem reported now and never reused (the next load tries the file again)."""
    return _Entry((-1, -1, -1), 0, 0, (), (Problem(Position(str(file), 1, 1), message),))


def _alias_expansion(file: Path, text: str) -> Problem | None:
    """Refuse a "billion laughs" file: a few aliases that expand to millions of values.

    The loader copies every alias, so the expanded size is what loading would cost.
    """
    if "&" not in text or "*" not in text:
        return None
    try:
        root = _C_LOADER(text).get_single_node()
    except (yaml.YAMLError, RecursionError):
        return None  # the real load reports syntax errors with their positions
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        sizes[id(node)] = total
        return total

    try:
        expanded = size(root) if root is not None else 0
    except RecursionError:
        expanded = MAX_EXPANDED_VALUES + 1
    if expanded > MAX_EXPANDED_VALUES:
        return Problem(
            Position(str(file), 1, 1),
            f"rule file expands to {expanded} values through YAML aliases, the limit is {MAX_EXPANDED_VALUES}",
        )
    return None


def _yaml_hints(file: Path, problems: list[Problem]) -> list[Problem]:
    """Add the usual cause to YAML syntax errors: ``[*]`` unquoted inside ``{...}``."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return problems
    out = []
    for problem in problems:
        near = lines[max(0, problem.position.line - 2) : problem.position.line]
        if problem.message.startswith("invalid YAML") and any("[*]" in line and "{" in line for line in near):
            problem = Problem(
                problem.position,
                f'{problem.message} (inside {{...}} a path with [*] must be quoted: path: "msg.a[*].b")',
            )
        out.append(problem)
    return out


def rule_files(paths: Iterable[Path | str]) -> list[Path]:
    """Every ``*.yaml`` in each directory (sorted by name), or the file itself, in config order."""
    files: list[Path] = []
    for entry in paths:
        base = Path(entry).expanduser()
        if base.is_dir():
            # scandir, not Path.glob: with 10k users' files, Path objects' sorting costs 0.2 s a reload.
            with os.scandir(base) as found:
                names = sorted(e.name for e in found if e.name.endswith(".yaml") and e.is_file())
            files.extend(base / name for name in names)
        elif base.is_file():
            files.append(base)
        else:
            # The SPEC's sketch lists a system and a per-user directory; a daemon running
            # as one of them rarely has both, so a missing one is not fatal, only logged.
            log.warning("rule path %s does not exist; no rules loaded from it", base)
    return files
