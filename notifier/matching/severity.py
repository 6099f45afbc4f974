"""The ``severity`` match key: fedora-messaging's logging level of a message.

``severity: warning`` (exactly), ``severity: [warning, error]`` (one of) or
``severity: {ge: warning}`` (with ``gt``, ``ge``, ``lt``, ``le``). Levels are the names
fedora-messaging uses (debug 10, info 20, warning 30, error 40) or numbers. fedmsg
messages carry no severity and count as ``info``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.match import Condition, Key, Requirement
from fedmsg_notify.meta.engine import Meta

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}
NAMES: Final = {value: name for name, value in LEVELS.items()}
OPS: Final[dict[str, Callable[[int, int], bool]]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


def level(value: Any) -> int:
    """A level name or number as a number; ``ValueError`` naming the accepted values otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return value
    if isinstance(value, str) and value.lower() in LEVELS:
        return LEVELS[value.lower()]
    raise ValueError(f"severity {value!r} is not one of {', '.join(LEVELS)} or a number from 0 to 100")


def _name(value: int) -> str:
    return NAMES.get(value, str(value))


class Severity(Condition):
    """The message's severity compared with a level (``op`` is ``in`` for a list of levels)."""

    __slots__ = ("levels", "op")

    def __init__(self, op: str, levels: tuple[int, ...]) -> None:
        self.op = op
        self.levels = levels

    @classmethod
    def parse(cls, value: Any) -> Severity:
        """From the rule's YAML value; ``ValueError`` with a readable message if it is not one."""
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in OPS:
                raise ValueError(f"severity: expected one of {', '.join(OPS)} with a level, e.g. {{ge: warning}}")
            op, target = next(iter(value.items()))
            return cls(op, (level(target),))
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ValueError("severity: expected a level, a list of levels or {ge: level}")
        return cls("in", tuple(level(item) for item in items))

    def test(self, message: Message, meta: Meta) -> bool:
        got = message.severity
        if self.op == "in":
            return got in self.levels
        return OPS[self.op](got, self.levels[0])

    def why_not(self, message: Message, meta: Meta) -> str | None:
        if self.test(message, meta):
            return None
        return f"{self.describe()}: got {_name(message.severity)}"

    def describe(self) -> str:
        if self.op == "in":
            return "severity " + " or ".join(_name(n) for n in self.levels)
        return f"severity {self.op} {_name(self.levels[0])}"

    def requirement(self) -> Requirement | None:
        # Few messages are above info: a weak key, but one that spares testing the rule on the rest.
        return Requirement(self.sufficient(), 3)

    def sufficient(self) -> frozenset[Key]:
        """``severity`` keys for a list of levels; one ``sevcmp`` key the index evaluates per message otherwise."""
        if self.op == "in":
            return frozenset(("severity", n) for n in self.levels)
        return frozenset({("sevcmp", (self.op, self.levels[0]))})
