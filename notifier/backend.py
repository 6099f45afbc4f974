"""The contract between the delivery engine and a backend.

A backend declares what it is as data (name, template parts, length limit, default
pace, digest support, its account and destination option models) and implements
``start`` / ``send`` / ``close``. ``send`` raises a :class:`DeliveryError` that says
whether the failure is temporary or permanent; one retry stage in the engine owns
backoff, jitter and caps for every backend. Library exceptions (aiosmtplib, irc,
D-Bus, HTTP) are translated inside the backend and never reach the core.
"""

from __future__ import annotations

import html
import importlib.util
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedmsg_notify.config.durations import Seconds
from fedmsg_notify.config.validation import StrictModel
from fedmsg_notify.render.sanitize import finish_parts
from pydantic import Field


class DeliveryError(Exception):
    """A send failed; ``temporary`` decides whether the engine retries it."""

    temporary: bool = True

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TemporaryFailure(DeliveryError):
    """Connection refused, SMTP 4xx, HTTP 429/5xx, IRC disconnect: try again later."""

    temporary = True


class PermanentFailure(DeliveryError):
    """SMTP 5xx, HTTP 4xx, bad recipient: recorded and shown by ``status``, never retried."""

    temporary = False


class BackendUnavailable(Exception):
    """The backend's optional library is missing; the message names the extra to install."""


def missing_modules(*names: str) -> list[str]:
    """Which of these importable names are not installed (without importing them)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def install_hint(extra: str) -> str:
    """How to install a backend's extra: the package is installed from a checkout, not PyPI."""
    return f"pip install '.[{extra}]' in the fedmsg-notify checkout (the '{extra}' extra)"


class AccountOptions(StrictModel):
    """Options every account has; backends extend this with their own keys."""

    backend: str
    rate: float | None = Field(default=None, gt=0, description="sends per second")
    burst: int | None = Field(default=None, ge=1, description="sends allowed at once")
    # A destination that is down for long: beyond this many queued deliveries (or deliveries
    # this old), the oldest are summarised into one counted item instead of waiting on.
    max_backlog: int | None = Field(default=None, ge=2, description="queued deliveries per destination at most")
    max_backlog_age: Seconds | None = Field(default=None, description="how long a delivery may wait, e.g. 6h")


class NoOptions(StrictModel):
    """Destination options of a backend that takes none."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a delivery goes: an account and, for backends that have one, a recipient."""

    account: str
    to: str | None = None

    @property
    def key(self) -> str:
        return f"{self.account}:{self.to}" if self.to else self.account

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work handed to ``Backend.send``: already rendered, ready to go."""

    id: int
    msg_id: str
    destination: Destination
    rule: str
    topic: str
    service: str
    rendered: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0
    # More than one when this item stands for a digest or a coalesced flood.
    count: int = 1


class Backend:
    """Base class of every backend. Subclasses set the class attributes and the methods."""

    name: ClassVar[str] = ""
    # Template blocks this backend renders; a single-part backend takes the whole template.
    parts: ClassVar[tuple[str, ...]] = ("text",)
    # Parts that must be a single line (IRC line, mail subject, popup summary): the
    # renderer folds CR/LF/tabs there, so message content can never start a new
    # protocol line or header.
    line_parts: ClassVar[frozenset[str]] = frozenset()
    # Parts rendered with HTML autoescaping on.
    html_parts: ClassVar[frozenset[str]] = frozenset()
    max_length: ClassVar[int | None] = None
    rate: ClassVar[float] = 10.0
    burst: ClassVar[int] = 10
    supports_digest: ClassVar[bool] = False
    # Longest wait between retries for this backend (None: the engine's cap, 15 min).
    # Lower where checking again is cheap and waiting is costly to the user.
    retry_cap: ClassVar[float | None] = None
    needs_recipient: ClassVar[bool] = False
    # Holds one connection or session per account (IRC, a desktop bus): with several daemons
    # on a shared store, only the one holding the account's lock sends there.
    connection_bound: ClassVar[bool] = False
    extra: ClassVar[str | None] = None
    Account: ClassVar[type[AccountOptions]] = AccountOptions
    Options: ClassVar[type[StrictModel]] = NoOptions

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        self.account_name = account_name
        self.account = account

    @classmethod
    def recipient_problem(cls, to: str) -> str | None:
        """Why a rule's ``to:`` could never be delivered to (``check`` reports it), else None."""
        return None

    @classmethod
    def missing_libraries(cls, account: AccountOptions) -> list[str]:
        """Optional libraries this account needs that are not installed (``check`` warns)."""
        return []

    @property
    def pace(self) -> tuple[float, int]:
        """(rate per second, burst) for this account: configured, else the backend's default."""
        return (self.account.rate or self.rate, self.account.burst or self.burst)

    async def start(self) -> None:
        """Open connections; raise :class:`BackendUnavailable` or :class:`DeliveryError`."""

    async def send(self, item: Item) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Flush and close connections; called once on shutdown."""

    def preview(self, item: Item) -> Mapping[str, str]:
        """What ``send`` would put on the wire for ``item``, without connecting (for ``explain``).

        Backends that reshape the rendered parts (cut to a protocol limit, add hashtags,
        add an age) override this; the default is the rendered parts themselves.
        """
        return item.rendered

    def summarise(self, items: Sequence[Item]) -> dict[str, str]:
        """Merge a backlog into one rendered payload (flood coalescing).

        The default names the count per service: ``"bodhi: 37 more messages"``.
        """
        total = sum(item.count for item in items)
        per_service = Counter[str]()
        for item in items:
            per_service[item.service] += item.count
        detail = ", ".join(f"{service}: {count}" for service, count in per_service.most_common())
        text = f"{total} more messages ({detail})"
        # Service names come from topics on the bus: make them as inert as template output.
        parts = {part: html.escape(text) if part in self.html_parts else text for part in self.parts}
        return finish_parts(parts, line_parts=self.line_parts, html_parts=self.html_parts)
