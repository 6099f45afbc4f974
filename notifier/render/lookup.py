"""Template lookup: which template file a message uses, loaded once, and what it reads.

Names are tried in SPEC order (:func:`candidates`); lookups, compiled templates and
the analysis of what a template reads from the context are cached per renderer.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fedmsg_notify.config.model import shipped_templates_dir
from fedmsg_notify.render.sandbox import _environment
from jinja2 import meta as jinja_meta
from jinja2 import nodes

log = logging.getLogger(__name__)

SHIPPED_PREFIX = "@shipped"
# Topics come from the bus: lookups per (backend, subtopic) are bounded, not one per topic ever seen.
LOOKUP_CACHE_SIZE = 10_000
# Longest topic prefix tried as a file name; real topics have 3-5 parts after the env,
# and a hostile 10,000-part topic must not cost 10,000 file lookups.
MAX_TOPIC_PARTS = 8


def candidates(backend: str, subtopic: str, explicit: str | None = None) -> list[str]:
    """Template names to try, in SPEC order, for ``backend`` and topic part ``subtopic``."""
    names = [explicit] if explicit else []
    parts = [p for p in subtopic.split(".") if p][:MAX_TOPIC_PARTS]
    for n in range(len(parts), 0, -1):
        names.append(f"{backend}/{'.'.join(parts[:n])}.j2")
    names.append(f"{backend}/default.j2")
    return names


class _LRU(OrderedDict[Any, Any]):
    """A dict that forgets its least recently used entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def lookup(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def store(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Analysis:
    """What a template (with everything it includes or extends) reads from the context."""

    variables: frozenset[str] | None  # None: unknown (a dynamic include), assume everything
    extends: bool


class TemplateLookup:
    """Finds, loads and analyses templates: the user directories before the shipped ones, cached."""

    def __init__(self, template_dirs: Sequence[Path] = ()) -> None:
        self.template_dirs = [Path(p) for p in template_dirs]
        self.shipped_dir = shipped_templates_dir()
        search = [str(p) for p in self.template_dirs] + [str(self.shipped_dir)]
        # followlinks only affects directory walking (list_templates); names with ".."
        # or absolute paths are refused by FileSystemLoader itself.
        self.loader = jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({SHIPPED_PREFIX: jinja2.FileSystemLoader(str(self.shipped_dir))}),
                jinja2.FileSystemLoader(search),
            ]
        )
        self.text_env = _environment(self.loader, html_part=False)
        self.html_env = _environment(self.loader, html_part=True)
        self._exists = _LRU(LOOKUP_CACHE_SIZE)
        self._resolved = _LRU(LOOKUP_CACHE_SIZE)
        self._templates: dict[tuple[str, bool], jinja2.Template | Exception] = {}
        self._analyses: dict[str, _Analysis] = {}
        # renders / cache_hits / resolutions / failures / fallbacks: for tests and status.
        self.stats: Counter[str] = Counter()

    # -- template lookup -------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """Whether ``name`` (relative to the template directories) names a template (cached)."""
        found: bool | None = self._exists.lookup(name)
        if found is None:
            try:
                self.loader.get_source(self.text_env, name)
                found = True
            except (jinja2.TemplateNotFound, OSError, ValueError):  # ValueError: a NUL in the name
                found = False
            self._exists.store(name, found)
        return found

    def resolve(self, backend: str, subtopic: str, explicit: str | None = None) -> str | None:
        """The first existing template name in SPEC order, cached per (backend, subtopic, explicit)."""
        key = (backend, subtopic, explicit)
        # Stored as a 1-tuple so that "no template at all" (None) is cached too.
        cached: tuple[str | None] | None = self._resolved.lookup(key)
        if cached is None:
            self.stats["resolutions"] += 1
            found = next((name for name in candidates(backend, subtopic, explicit) if self.exists(name)), None)
            if explicit and found != explicit:
                log.warning("template '%s' not found in %s; using %s", explicit, self._dirs(), found)
            cached = (found,)
            self._resolved.store(key, cached)
        return cached[0]

    def _dirs(self) -> str:
        return ", ".join(str(p) for p in [*self.template_dirs, self.shipped_dir])

    def _load(self, name: str, html_part: bool) -> jinja2.Template:
        key = (name, html_part)
        if key not in self._templates:
            env = self.html_env if html_part else self.text_env
            try:
                self._templates[key] = env.get_template(name)
            except Exception as exc:
                # Remembered so a broken file is compiled (and logged) once, not per message.
                self._templates[key] = exc
        found = self._templates[key]
        if isinstance(found, Exception):
            raise found
        return found

    def _analyse(self, name: str, seen: frozenset[str] = frozenset()) -> _Analysis:
        """Context names read by ``name`` and the templates it includes, imports or extends."""
        if name in self._analyses:
            return self._analyses[name]
        try:
            source, filename, _ = self.loader.get_source(self.text_env, name)
            ast = self.text_env.parse(source, name, filename)
        except Exception:
            return _Analysis(None, False)
        variables: set[str] | None = set(jinja_meta.find_undeclared_variables(ast))
        for ref in jinja_meta.find_referenced_templates(ast):
            if ref is None:  # a computed name: it could read anything
                variables = None
                continue
            if ref in seen:  # recursive include
                continue
            sub = self._analyse(ref, seen | {name})
            if sub.variables is None or variables is None:
                variables = None
            else:
                variables |= sub.variables
        result = _Analysis(None if variables is None else frozenset(variables), any(ast.find_all(nodes.Extends)))
        self._analyses[name] = result
        return result
