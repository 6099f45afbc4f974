"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording what it accepts.

The handler can be scripted to answer with an error for the first N attempts at a
stage (``RCPT`` or ``DATA``), which is how tests produce 421/451/550 replies; it can
offer STARTTLS and AUTH with certificates from ``trustme``. Everything else is the
genuine aiosmtpd protocol implementation.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Delivered:
    """One mail the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    @property
    def mail(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Handler:
    """Stores accepted envelopes; answers scripted errors first."""

    delivered: list[Delivered] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    script: dict[str, list[str]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, stage: str, reply: str, times: int = 1) -> None:
        """Answer ``reply`` (e.g. ``"451 4.3.0 try later"``) to the next ``times`` ``stage`` commands."""
        with self.lock:
            self.script.setdefault(stage, []).extend([reply] * times)

    def _scripted(self, stage: str) -> str | None:
        with self.lock:
            self.attempts[stage] = self.attempts.get(stage, 0) + 1
            queue = self.script.get(stage)
            return queue.pop(0) if queue else None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        reply = self._scripted("RCPT")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self._scripted("DATA")
        if reply:
            return reply
        login = session.auth_data if isinstance(session.auth_data, str) else None
        with self.lock:
            self.delivered.append(
                Delivered(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or envelope.content),
                    tls=session.ssl is not None,
                    login=login,
                )
            )
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        # The login name becomes session.auth_data, so a delivery records who logged in.
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)


@contextmanager
def smtp_server(
    port: int,
    *,
    tls_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    require_starttls: bool = False,
    users: dict[str, str] | None = None,
) -> Iterator[Handler]:
    """Run an SMTP server on 127.0.0.1:``port`` for the duration of the block."""
    handler = Handler(users=dict(users or {}))
    kwargs: dict[str, Any] = {}
    if users:
        kwargs.update(authenticator=handler.authenticate, auth_require_tls=True)
    if tls_context is not None and not implicit_tls:
        kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ssl_context=tls_context if implicit_tls else None,
        server_hostname="localhost",
        **kwargs,
    )
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()
