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
        (line, column), message = describe_yaml_error(text, exc)
        raise ProblemsError([Problem(Position(file, line, column), message)]) from exc
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


# -- YAML syntax errors, said in words and placed where the mistake began ------------------
# PyYAML reports where it gave up: an unterminated quote at the end of the file, a
# mis-indented key as "expected <block end>, but found '<block mapping start>'". Users need
# the line where the quote or block began and what to do about it.

Where = tuple[int, int]  # 1-based line and column


def _pos(mark: yaml.Mark) -> Where:
    return (mark.line + 1, mark.column + 1)


def _char_at(text: str, mark: yaml.Mark) -> str:
    lines = text.splitlines()
    if mark.line < len(lines) and mark.column < len(lines[mark.line]):
        return lines[mark.line][mark.column]
    return ""


def describe_yaml_error(text: str, exc: yaml.MarkedYAMLError) -> tuple[Where, str]:
    """``((line, column), message)`` for a YAML syntax error: where it began, in plain words."""
    context, problem = exc.context or "", exc.problem or str(exc)
    start, stop = exc.context_mark, exc.problem_mark
    if stop is None:
        return (1, 1), f"invalid YAML: {problem}"
    at = f"line {stop.line + 1}, column {stop.column + 1}"
    if start is not None and "quoted scalar" in context:
        quote = _char_at(text, start) or "quote"
        ending = "the end of the file" if "end of stream" in problem else at
        return (
            _pos(start),
            f"invalid YAML: unterminated string: the {quote} here is never closed "
            f"(YAML read on to {ending} looking for the closing {quote})",
        )
    if start is not None and "expected <block end>" in problem:
        if start.column == stop.column:
            began, found = ("list", "a mapping key") if "collection" in context else ("mapping", "something else")
            return (
                _pos(stop),
                f"invalid YAML: bad indentation: {found} in the same column as the {began} begun at line "
                f"{start.line + 1}; one block holds either list items ('- ...') or keys ('key: ...'), not both",
            )
        return (
            _pos(stop),
            f"invalid YAML: bad indentation: this line starts in column {stop.column + 1}, but the block it "
            f"belongs to, begun at line {start.line + 1}, has its entries in column {start.column + 1}; "
            "line them up (or nest it under a key that ends with ':')",
        )
    if start is not None and "flow" in context:
        bracket = _char_at(text, start) or "bracket"
        closing = {"[": "]", "{": "}"}.get(bracket, "the closing bracket")
        if "<stream end>" in problem:
            return (
                _pos(start),
                f"invalid YAML: the {bracket} here is never closed (the file ends before its {closing})",
            )
        return (
            _pos(start),
            f"invalid YAML: the {bracket} here is not closed: at {at} YAML found {problem.rsplit(' ', 1)[-1]} "
            f"where it expected ',' or {closing}",
        )
    if "'\\t'" in problem:
        return (_pos(stop), "invalid YAML: a tab character: YAML indents with spaces only")
    where = f" ({context} begun at line {start.line + 1}, column {start.column + 1})" if start and context else ""
    return (_pos(stop), f"invalid YAML: {problem}{where}")
