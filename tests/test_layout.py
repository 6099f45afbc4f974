"""The package's shape: no import cycles, and no stage imports one that comes after it.

Every ``import`` counts, including those inside functions and under ``TYPE_CHECKING``:
a lazy import is still a dependency, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"fedmsg_notify": ROOT / "notifier", "fedmsg_notify.backends": ROOT / "backends"}

# What each part of the package must never import (prefixes of module names).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "fedmsg_notify.bus": (
        "fedmsg_notify.meta",
        "fedmsg_notify.matching",
        "fedmsg_notify.render",
        "fedmsg_notify.delivery",
        "fedmsg_notify.store",
        "fedmsg_notify.backends",
        "fedmsg_notify.commands",
        "fedmsg_notify.daemon",
        "fedmsg_notify.config.model",
    ),
    "fedmsg_notify.meta": (
        "fedmsg_notify.matching",
        "fedmsg_notify.render",
        "fedmsg_notify.delivery",
        "fedmsg_notify.store",
        "fedmsg_notify.backends",
        "fedmsg_notify.commands",
        "fedmsg_notify.daemon",
    ),
    "fedmsg_notify.matching": (
        "fedmsg_notify.render",
        "fedmsg_notify.delivery",
        "fedmsg_notify.store",
        "fedmsg_notify.backends",
        "fedmsg_notify.commands",
        "fedmsg_notify.daemon",
    ),
    "fedmsg_notify.render": ("fedmsg_notify.delivery", "fedmsg_notify.store", "fedmsg_notify.commands", "fedmsg_notify.daemon"),
    "fedmsg_notify.store": (
        "fedmsg_notify.bus",
        "fedmsg_notify.matching",
        "fedmsg_notify.render",
        "fedmsg_notify.delivery",
        "fedmsg_notify.backends",
        "fedmsg_notify.commands",
        "fedmsg_notify.daemon",
    ),
    "fedmsg_notify.delivery": ("fedmsg_notify.commands", "fedmsg_notify.daemon"),
    "fedmsg_notify.backends": (
        "fedmsg_notify.bus",
        "fedmsg_notify.matching",
        "fedmsg_notify.store",
        "fedmsg_notify.delivery",
        "fedmsg_notify.commands",
        "fedmsg_notify.daemon",
    ),
    "fedmsg_notify.backend": (
        "fedmsg_notify.bus",
        "fedmsg_notify.meta",
        "fedmsg_notify.matching",
        "fedmsg_notify.store",
        "fedmsg_notify.delivery",
        "fedmsg_notify.commands",
        "fedmsg_notify.daemon",
    ),
    "fedmsg_notify.config.yaml_positions": ("fedmsg_notify.",),
    "fedmsg_notify.config.redact": ("fedmsg_notify.",),
    "fedmsg_notify.config.validation": ("fedmsg_notify.bus", "fedmsg_notify.backends", "fedmsg_notify.config.model"),
    "fedmsg_notify.daemon": ("fedmsg_notify.commands",),
    "fedmsg_notify.daemon_cluster": ("fedmsg_notify.commands",),
    # The web backend's HTTP server knows nothing of the daemon: it gets settings and a snapshot callable.
    "fedmsg_notify.backends.web": (
        "fedmsg_notify.bus",
        "fedmsg_notify.meta",
        "fedmsg_notify.matching",
        "fedmsg_notify.render.renderer",
        "fedmsg_notify.store",
        "fedmsg_notify.delivery",
        "fedmsg_notify.commands",
        "fedmsg_notify.daemon",
        "fedmsg_notify.webserver",
        "fedmsg_notify.config.model",
    ),
    "fedmsg_notify.webserver": ("fedmsg_notify.commands", "fedmsg_notify.daemon", "fedmsg_notify.delivery"),
}

# Stages that must stay free of the command line and of each other's tops.
MAX_LINES = 500


def _module_name(path: Path) -> str:
    for prefix, folder in sorted(SOURCES.items(), key=lambda kv: len(str(kv[1])), reverse=True):
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([prefix, *parts])
    raise AssertionError(path)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in SOURCES.values():
        for path in folder.rglob("*.py"):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # The longest known module a target names (``a.b.C`` imports ``a.b``).
            candidate = target
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                out.add(candidate)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix.rstrip(".") or module.startswith(prefix if prefix.endswith(".") else prefix + ".")


def test_the_graph_sees_the_known_edges() -> None:
    # Guards the test itself: if parsing broke, every check below would pass vacuously.
    assert "fedmsg_notify.bus.envelope" in GRAPH["fedmsg_notify.bus.zeromq"]
    assert "fedmsg_notify.backend" in GRAPH["fedmsg_notify.delivery.workers"]
    assert len(MODULES) > 40


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components; any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in GRAPH.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("owner", sorted(FORBIDDEN))
def test_no_stage_imports_a_later_one(owner: str) -> None:
    bad = []
    for module, deps in GRAPH.items():
        if not _is_under(module, owner):
            continue
        for dep in deps:
            if _is_under(dep, owner):
                continue
            if any(_is_under(dep, forbidden) for forbidden in FORBIDDEN[owner]):
                bad.append(f"{module} imports {dep}")
    assert bad == []


def test_the_forbidden_map_names_real_parts() -> None:
    for owner, forbidden in FORBIDDEN.items():
        assert any(_is_under(m, owner) for m in MODULES), owner
        for prefix in forbidden:
            assert any(_is_under(m, prefix) or m.startswith(prefix) for m in MODULES), prefix


def test_no_module_is_over_the_size_limit() -> None:
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
