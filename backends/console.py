"""The console backend: one rendered line per message on stdout (demo, debugging, tail-like use)."""

from __future__ import annotations

import sys
from typing import ClassVar, TextIO

from fedmsg_notify.backend import Backend, Item


class ConsoleBackend(Backend):
    name: ClassVar[str] = "console"
    parts: ClassVar[tuple[str, ...]] = ("line",)
    line_parts: ClassVar[frozenset[str]] = frozenset({"line"})
    rate: ClassVar[float] = 10_000.0
    burst: ClassVar[int] = 10_000
    stream: TextIO | None = None

    async def send(self, item: Item) -> None:
        out = self.stream or sys.stdout
        line = item.rendered.get("line", "").replace("\r", " ").replace("\n", " ")
        out.write(line + "\n")
        out.flush()
