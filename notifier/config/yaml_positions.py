"""YAML loading that remembers where every value came from.

Configuration and rule errors must name ``file:line:column``. PyYAML's composer
keeps a mark on every node; we construct plain Python objects from the node tree
ourselves and record, for every path into the document, the position of its value
and (for mapping entries) of its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Position:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One error found in a user-written file, printed as ``file:line:col: message``."""

    position: Position
    message: str

    def __str__(self) -> str:
        return f"{self.position}: {self.message}"


class ProblemsError(Exception):
    """Raised with every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        # In file order, so a user can fix them top to bottom.
        self.problems = sorted(problems, key=lambda p: (p.position.file, p.position.line, p.position.column))
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(slots=True)
class LocatedDocument:
    """A parsed YAML document plus the position of each value and key in it."""

    file: str
    data: Any
    values: dict[PathKey, Position] = field(default_factory=dict)
    keys: dict[PathKey, Position] = field(default_factory=dict)

    def where(self, path: PathKey, *, key: bool = False) -> Position:
        """Position of ``path`` (its key when ``key``), else of its nearest ancestor."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Position(self.file, 1, 1))


def _mark(file: str, node: yaml.Node) -> Position:
    # PyYAML marks are 0-based; editors and compilers count from 1.
    return Position(file, node.start_mark.line + 1, node.start_mark.column + 1)


def load_located(path: str | Path, text: str | None = None) -> LocatedDocument:
    """Parse one YAML file; raise :class:`ProblemsError` on syntax errors or duplicate keys."""
    file = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProblemsError([Problem(Position(file, 1, 1), f"cannot read file: {exc}")]) from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(file, mark.line + 1, mark.column + 1) if mark else Position(file, 1, 1)
        raise ProblemsError([Problem(pos, f"invalid YAML: {exc.problem or exc}")]) from exc
    except yaml.YAMLError as exc:
        raise ProblemsError([Problem(Position(file, 1, 1), f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    doc = LocatedDocument(file=file, data=None)
    if node is None:
        doc.values[()] = Position(file, 1, 1)
        return doc
    problems: list[Problem] = []
    doc.data = _build(loader, file, node, (), doc, problems)
    if problems:
        raise ProblemsError(problems)
    return doc


def _build(
    loader: yaml.SafeLoader,
    file: str,
    node: yaml.Node,
    path: PathKey,
    doc: LocatedDocument,
    problems: list[Problem],
) -> Any:
    doc.values[path] = _mark(file, node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                problems.append(Problem(_mark(file, key_node), "mapping keys must be plain scalars"))
                continue
            skey = key if isinstance(key, str) else str(key)
            if skey in result:
                problems.append(Problem(_mark(file, key_node), f"duplicate key '{skey}'"))
                continue
            child = (*path, skey)
            doc.keys[child] = _mark(file, key_node)
            result[skey] = _build(loader, file, value_node, child, doc, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, file, item, (*path, index), doc, problems) for index, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
