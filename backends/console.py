"""The console backend: one rendered line per message on stdout (demo, debugging, tail-like use).

With ``label: true`` each line starts with its destination (``[firehose:#fedora-firehose]``),
so two destinations printing the same message are told apart.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import ClassVar, TextIO

from fedmsg_notify.backend import AccountOptions, Backend, Item


class ConsoleAccount(AccountOptions):
    # Start each line with the destination it was delivered to.
    label: bool = False


class ConsoleBackend(Backend):
    name: ClassVar[str] = "console"
    parts: ClassVar[tuple[str, ...]] = ("line",)
    line_parts: ClassVar[frozenset[str]] = frozenset({"line"})
    rate: ClassVar[float] = 10_000.0
    burst: ClassVar[int] = 10_000
    Account: ClassVar[type[AccountOptions]] = ConsoleAccount
    stream: TextIO | None = None
    # Lines printed per account in this process (the demo's summary reads it).
    printed: ClassVar[Counter[str]] = Counter()

    async def send(self, item: Item) -> None:
        out = self.stream or sys.stdout
        line = item.rendered.get("line", "").replace("\r", " ").replace("\n", " ")
        if isinstance(self.account, ConsoleAccount) and self.account.label:
            line = f"[{item.destination}] {line}"
        out.write(line + "\n")
        out.flush()
        ConsoleBackend.printed[self.account_name] += 1
