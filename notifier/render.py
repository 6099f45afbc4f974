"""Rendering matches through jinja2 templates (foundation version).

Resolution order for backend ``B`` and subtopic ``s.o.e``: the destination's
``template``; ``B/s.o.e.j2``; ``B/s.o.j2``; ``B/s.j2``; ``B/default.j2`` — user
directories before the shipped ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2
from fedmsg_notify.backend import Backend
from fedmsg_notify.config import shipped_templates_dir
from fedmsg_notify.envelope import Message
from fedmsg_notify.meta import Meta
from fedmsg_notify.rules import Route
from jinja2.sandbox import SandboxedEnvironment


def candidates(backend: str, subtopic: str, explicit: str | None = None) -> list[str]:
    names = [explicit] if explicit else []
    parts = subtopic.split(".")
    for n in range(len(parts), 0, -1):
        names.append(f"{backend}/{'.'.join(parts[:n])}.j2")
    names.append(f"{backend}/default.j2")
    return names


class Renderer:
    def __init__(self, template_dirs: Iterable[Path] = ()) -> None:
        search = [str(p) for p in template_dirs] + [str(shipped_templates_dir())]
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(search), undefined=jinja2.StrictUndefined, autoescape=False
        )

    def render(self, backend: type[Backend], message: Message, meta: Meta, route: Route) -> dict[str, str]:
        template = self.env.select_template(candidates(backend.name, message.parts.subtopic, route.template))
        context: dict[str, Any] = {
            "message": message.envelope,
            "body": message.body,
            "topic": message.topic,
            "meta": meta.as_dict(),
            "rule": {"name": route.rule.name, "file": route.rule.file},
        }
        return {backend.parts[0]: template.render(context).strip()}
