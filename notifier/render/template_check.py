"""``check`` for templates: syntax, sandbox escapes, missing includes, unknown names, absent blocks.

Static: nothing is rendered, so a template can be tried before any message reaches it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

import jinja2
from fedmsg_notify.backend import Backend
from fedmsg_notify.config.yaml_positions import Position, Problem
from fedmsg_notify.render.lookup import TemplateLookup
from jinja2 import meta as jinja_meta
from jinja2 import nodes

# What a per-message template sees, and what a digest template sees.
MESSAGE_CONTEXT = frozenset({"message", "body", "topic", "service", "meta", "rule", "destination", "verified"})
DIGEST_CONTEXT = frozenset({"messages", "count", "rule", "destination"})


def check_templates(templates: TemplateLookup) -> list[Problem]:
    """Every problem in every template of the user and shipped directories, as positioned problems."""
    problems: list[Problem] = []
    for base in [*templates.template_dirs, templates.shipped_dir]:
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.j2")):
            problems.extend(_check_file(templates, path, path.relative_to(base).as_posix()))
    return problems

def _check_file(templates: TemplateLookup, path: Path, name: str) -> list[Problem]:
    def at(line: int | None, message: str) -> Problem:
        return Problem(Position(str(path), line or 1, 1), message)

    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [at(1, f"cannot read template: {exc}")]
    backend_cls = _backend_for(name)
    envs = [templates.text_env]
    if backend_cls is not None and backend_cls.html_parts:
        envs.append(templates.html_env)
    ast: nodes.Template | None = None
    for env in envs:
        try:
            parsed = env.parse(source, name, str(path))
            env.compile(parsed, name, str(path))
        except jinja2.TemplateSyntaxError as exc:
            return [at(exc.lineno, exc.message or str(exc))]
        ast = ast or parsed
    assert ast is not None
    problems = [at(line, message) for line, message in _scan(templates, ast, name, backend_cls)]
    return sorted(problems, key=lambda p: p.position.line)

def _scan(
    templates: TemplateLookup, ast: nodes.Template, name: str, backend_cls: type[Backend] | None
) -> Iterator[tuple[int, str]]:
    """Static checks: Python internals, includes outside the template directories, unknown names, blocks."""
    for getattr_node in ast.find_all(nodes.Getattr):
        if getattr_node.attr.startswith("_"):
            yield getattr_node.lineno, _internals(getattr_node.attr)
    for getitem_node in ast.find_all(nodes.Getitem):
        key = _const_str(getitem_node.arg)
        if key is not None and key.startswith("_"):
            yield getitem_node.lineno, _internals(key)
    for tag, node in _references(ast):
        targets = _template_names(node.template)
        if targets and not any(templates.exists(target) for target in targets):
            yield node.lineno, f"{tag} '{' or '.join(targets)}': no such template in {templates._dirs()}"
    digest = "digest" in Path(name).name
    known = (DIGEST_CONTEXT if digest else MESSAGE_CONTEXT) | set(templates.text_env.globals)
    undeclared = jinja_meta.find_undeclared_variables(ast) - known
    for var in sorted(undeclared):
        line = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == var), 1)
        close = difflib.get_close_matches(var, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        yield line, f"unknown variable '{var}'{hint}"
    if backend_cls is not None and len(backend_cls.parts) > 1 and not any(ast.find_all(nodes.Extends)):
        blocks = {b.name for b in ast.find_all(nodes.Block)}
        for part in backend_cls.parts:
            if part not in blocks:
                yield (
                    1,
                    (
                        f"no {{% block {part} %}}: {backend_cls.name} renders "
                        f"{', '.join(backend_cls.parts)}; its {part} would be empty"
                    ),
                )



def _backend_for(name: str) -> type[Backend] | None:
    """The backend class of ``<backend>/...j2``, if that directory names a known backend."""
    from fedmsg_notify.backends import backend_class  # late: backends import this package's modules

    head, sep, _ = name.partition("/")
    if not sep:
        return None
    try:
        found: type[Backend] = backend_class(head)
    except (KeyError, ImportError):
        return None
    return found


def _const_str(node: nodes.Node) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


_Reference = nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends


def _references(ast: nodes.Template) -> Iterator[tuple[str, _Reference]]:
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        if isinstance(node, nodes.Include):
            if not node.ignore_missing:
                yield "include", node
        elif isinstance(node, nodes.Import):
            yield "import", node
        elif isinstance(node, nodes.FromImport):
            yield "from", node
        elif isinstance(node, nodes.Extends):
            yield "extends", node


def _internals(attr: str) -> str:
    return f"'{attr}' is not allowed: templates cannot reach Python internals"


def _template_names(node: nodes.Expr) -> list[str]:
    """Constant template names of an include/import/extends; a list means "the first that exists"."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (nodes.List, nodes.Tuple)):
        names = [_const_str(item) for item in node.items]
        return [n for n in names if n is not None] if all(n is not None for n in names) else []
    return []  # computed at render time: cannot be checked statically
