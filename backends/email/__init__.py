"""The email backend: one mail per message, or a filtered digest of many.

An account is an SMTP server (``smtp://host[:port]``, ``smtps://host[:port]``) or a
local Maildir (``maildir:/path``) plus a ``from`` address; a destination's ``to`` is
the recipient. The mail itself is built in :mod:`.compose` (headers, MIME, threading)
and carried by a transport from :mod:`.transport`, which is also where aiosmtplib's
exceptions are translated into temporary and permanent delivery failures.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from fedmsg_notify.backend import AccountOptions, Backend, Item, PermanentFailure, missing_modules
from fedmsg_notify.backends.email.compose import Sender, compose, parse_address
from fedmsg_notify.backends.email.transport import MaildirTransport, SmtpTransport, Transport
from pydantic import Field, field_validator, model_validator

log = logging.getLogger(__name__)

# How many subjects a coalesced flood mail lists before saying "and N more".
SUMMARY_LINES = 50


class SmtpTarget:
    """A parsed ``smtp:`` value: where mail goes."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.scheme: Literal["smtp", "smtps", "maildir"]
        self.host = ""
        self.port = 0
        self.path: Path | None = None
        if value.startswith("maildir:"):
            raw = value[len("maildir:") :]
            if raw.startswith("//"):
                raw = raw[2:]
            if not raw.strip():
                raise ValueError("maildir: needs a path, e.g. 'maildir:~/Maildir'")
            self.scheme = "maildir"
            self.path = Path(raw).expanduser()
            return
        parts = urlsplit(value)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(f"expected smtp://host[:port], smtps://host[:port] or maildir:/path, got {value!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {value!r}: {exc}") from None
        if not parts.hostname:
            raise ValueError(f"no host in {value!r}; expected {parts.scheme}://host[:port]")
        if parts.username or parts.password:
            raise ValueError("put credentials in 'username' and 'password_file', not in the smtp URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"unexpected path or query in {value!r}; expected {parts.scheme}://host[:port]")
        self.scheme = "smtps" if parts.scheme == "smtps" else "smtp"
        self.host = parts.hostname
        # RFC 8314: implicit TLS submission listens on 465; plain SMTP relays on 25.
        self.port = port or (465 if self.scheme == "smtps" else 25)

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


class EmailAccount(AccountOptions):
    """``accounts.<name>`` for ``backend: email``."""

    smtp: str = Field(description="smtp://host[:port], smtps://host[:port] or maildir:/path")
    from_: str = Field(alias="from", description='sender, e.g. "Fedora Notifications <notify@example.org>"')
    starttls: Literal["opportunistic", "required", "off"] = Field(
        default="opportunistic",
        description="smtp:// only: 'opportunistic' encrypts when the server offers STARTTLS (certificate not"
        " checked, like Postfix's 'may'); 'required' insists on it and verifies the certificate; 'off' never",
    )
    username: str | None = Field(default=None, description="AUTH user; needs password_file")
    password_file: Path | None = Field(default=None, description="file holding the AUTH password (first line)")
    ca_file: Path | None = Field(default=None, description="PEM CA bundle to verify the server with")
    timeout: float = Field(default=30.0, gt=0, le=600, description="seconds per connect or SMTP command")

    @field_validator("smtp")
    @classmethod
    def _check_smtp(cls, value: str) -> str:
        SmtpTarget(value)
        return value

    @field_validator("from_")
    @classmethod
    def _check_from(cls, value: str) -> str:
        parse_address(value, what="from")
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> EmailAccount:
        target = SmtpTarget(self.smtp)
        if (self.username is None) != (self.password_file is None):
            raise ValueError("'username' and 'password_file' go together")
        if target.scheme == "maildir":
            extra = [k for k in ("username", "ca_file") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} make no sense with smtp: maildir:")
            return self
        if target.scheme == "smtps" and self.starttls == "required":
            raise ValueError("smtps:// is TLS from the start; 'starttls' applies to smtp:// only")
        # A password must never cross the network unencrypted or to an unverified server.
        if self.username and target.scheme == "smtp" and self.starttls != "required" and not target.loopback:
            raise ValueError(
                f"AUTH to {target.host} needs a verified TLS connection: use smtps:// or 'starttls: required'"
            )
        return self

    @property
    def target(self) -> SmtpTarget:
        return SmtpTarget(self.smtp)


class EmailBackend(Backend):
    """Mails through SMTP or into a Maildir; digests arrive as one mail."""

    name: ClassVar[str] = "email"
    parts: ClassVar[tuple[str, ...]] = ("subject", "text", "html")
    line_parts: ClassVar[frozenset[str]] = frozenset({"subject"})
    html_parts: ClassVar[frozenset[str]] = frozenset({"html"})
    # A mail server takes a few mails a second without complaint; a flood beyond that is
    # better coalesced (or digested) than sent as hundreds of mails.
    rate: ClassVar[float] = 2.0
    burst: ClassVar[int] = 20
    supports_digest: ClassVar[bool] = True
    needs_recipient: ClassVar[bool] = True
    extra: ClassVar[str | None] = "email"
    Account: ClassVar[type[AccountOptions]] = EmailAccount

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        super().__init__(account_name, account)
        assert isinstance(account, EmailAccount)
        self.options: EmailAccount = account
        self.sender: Sender = Sender.from_header(account.from_)
        self.transport: Transport = self._transport()

    def _transport(self) -> Transport:
        target = self.options.target
        if target.scheme == "maildir":
            assert target.path is not None
            return MaildirTransport(target.path)
        return SmtpTransport(
            host=target.host,
            port=target.port,
            implicit_tls=target.scheme == "smtps",
            starttls=self.options.starttls,
            username=self.options.username,
            password_file=self.options.password_file,
            ca_file=self.options.ca_file,
            timeout=self.options.timeout,
            label=f"{self.account_name} ({target})",
        )

    @classmethod
    def recipient_problem(cls, to: str) -> str | None:
        try:
            parse_address(to, what="to")
        except ValueError as exc:
            return str(exc)
        return None

    @classmethod
    def missing_libraries(cls, account: AccountOptions) -> list[str]:
        if isinstance(account, EmailAccount) and account.target.scheme == "maildir":
            return []
        return missing_modules("aiosmtplib")

    async def start(self) -> None:
        await self.transport.start()

    async def send(self, item: Item) -> None:
        if not item.destination.to:
            raise PermanentFailure(f"account '{self.account_name}' needs a recipient: add 'to: address' to the rule")
        recipient = parse_address(item.destination.to, what="to", error=PermanentFailure)
        mail = compose(item, self.sender, recipient)
        await self.transport.deliver(mail, self.sender.address.addr_spec, recipient.addr_spec)
        what = item.topic or "a digest"  # a digest has no single topic
        log.info("mailed %s (%s) to %s via %s", item.msg_id, what, recipient.addr_spec, self.account_name)

    async def close(self) -> None:
        await self.transport.close()

    def summarise(self, items: Sequence[Item]) -> dict[str, str]:
        """One mail for a coalesced flood: the count per service, then each subject."""
        total = sum(item.count for item in items)
        per_service = Counter[str]()
        for item in items:
            per_service[item.service] += item.count
        services = ", ".join(f"{service} ({count})" for service, count in per_service.most_common())
        subject = f"{total} notifications: {services}"
        subjects = [item.rendered.get("subject", "") or item.topic for item in items[:SUMMARY_LINES]]
        rest = len(items) - len(subjects)
        more = [f"... and {rest} more"] if rest > 0 else []
        text = "\n".join([subject, "", *(f"{n}. {s}" for n, s in enumerate(subjects, 1)), *more])
        html = (
            f"<p>{escape(subject)}</p>\n<ol>\n"
            + "".join(f"<li>{escape(s)}</li>\n" for s in subjects)
            + "</ol>\n"
            + (f"<p>{escape(more[0])}</p>\n" if more else "")
        )
        return {"subject": subject, "text": text, "html": html}
