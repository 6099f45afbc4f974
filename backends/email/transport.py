"""Carrying a finished mail: SMTP (aiosmtplib) or a local Maildir.

This is the edge where library exceptions stop. Connection failures, timeouts and
4xx replies become :class:`TemporaryFailure` (the engine retries); 5xx replies become
:class:`PermanentFailure` carrying the server's own text (recorded, shown by
``status``). aiosmtplib is imported lazily so the backend (and config validation)
works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mailbox
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol

from fedmsg_notify.backend import BackendUnavailable, PermanentFailure, TemporaryFailure, install_hint
from pydantic import SecretStr

if TYPE_CHECKING:
    import aiosmtplib

log = logging.getLogger(__name__)

# A burst of notifications reuses one connection; a connection idle this long is closed
# politely (QUIT) instead of waiting for the server's own timeout (RFC 5321 4.5.3.2.7: 5 min).
IDLE_SECONDS = 10.0


class Transport(Protocol):
    async def start(self) -> None: ...

    async def deliver(self, mail: EmailMessage, sender: str, recipient: str) -> None: ...

    async def close(self) -> None: ...


class MaildirTransport:
    """Writes each mail as one file into a Maildir (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def start(self) -> None:
        await self._run(self._open)

    def _open(self) -> mailbox.Maildir:
        # mailbox creates only the last directory; mail is private, hence 0700 for parents too.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return mailbox.Maildir(self.path, create=True)

    async def deliver(self, mail: EmailMessage, sender: str, recipient: str) -> None:
        # Maildir files use the local line ending; the SMTP policy's CRLF is for the wire.
        data = mail.as_bytes(policy=default_policy)
        await self._run(lambda: self._open().add(data))

    async def _run(self, work: Callable[[], object]) -> None:
        try:
            await asyncio.to_thread(work)
        except OSError as exc:
            # Full disk, wrong permissions: fixable without losing the mail, so retry.
            raise TemporaryFailure(f"cannot write to Maildir {self.path}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        return None


def _require_aiosmtplib() -> None:
    try:
        import aiosmtplib  # noqa: F401
    except ImportError:
        raise BackendUnavailable(
            f"the email backend needs aiosmtplib for smtp:// accounts: {install_hint('email')}"
        ) from None


class SmtpTransport:
    """One SMTP client per account, kept open across a burst and reopened on failure."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        implicit_tls: bool,
        starttls: Literal["opportunistic", "required", "off"],
        username: str | None,
        password_file: Path | None,
        ca_file: Path | None,
        timeout: float,
        label: str,
        idle: float = IDLE_SECONDS,
    ) -> None:
        self.host = host
        self.port = port
        self.implicit_tls = implicit_tls
        self.starttls = starttls
        self.username = username
        self.password_file = password_file
        self.ca_file = ca_file
        self.timeout = timeout
        self.label = label
        self.idle = idle
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.connections = 0  # how many times we connected: lets tests see reuse

    @property
    def connected(self) -> bool:
        """Whether a session to the server is open right now (kept open briefly after a burst)."""
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        _require_aiosmtplib()

    async def deliver(self, mail: EmailMessage, sender: str, recipient: str) -> None:
        async with self._lock:
            self._cancel_idle_timer()
            try:
                await self._send(mail, sender, recipient)
            except BaseException:
                # After any failure the session state is unknown: start the next mail afresh.
                await self._drop()
                raise
            self._arm_idle_timer()

    async def _send(self, mail: EmailMessage, sender: str, recipient: str) -> None:
        import aiosmtplib

        reused = self._client is not None and self._client.is_connected
        try:
            client = await self._connected()
            try:
                await client.send_message(mail, sender=sender, recipients=[recipient])
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # Almost always the server dropped our idle connection before this mail began.
                # Retrying at once on a fresh session is what the engine's retry would do anyway,
                # minus the delay; the stable Message-ID lets a receiver drop a rare duplicate.
                log.info("%s: connection was closed by the server, reconnecting", self.label)
                await self._drop()
                client = await self._connected()
                await client.send_message(mail, sender=sender, recipients=[recipient])
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, ValueError) as exc:
            translate(exc, self.label)

    async def _connected(self) -> aiosmtplib.SMTP:
        import aiosmtplib

        if self._client is not None and self._client.is_connected:
            return self._client
        await self._drop()
        password = self._password()
        tls_context = self._tls_context()
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.implicit_tls,
            # aiosmtplib: None = STARTTLS when offered, True = insist, False = never.
            start_tls={"opportunistic": None, "required": True, "off": False}[self.starttls]
            if not self.implicit_tls
            else False,
            tls_context=tls_context,
            timeout=self.timeout,
            username=self.username,
            password=password.get_secret_value() if password is not None else None,
        )
        await client.connect()
        self.connections += 1
        self._client = client
        encrypted = client.get_transport_info("sslcontext") is not None
        log.info("%s: connected (%s)", self.label, "TLS" if encrypted else "unencrypted")
        return client

    def _password(self) -> SecretStr | None:
        """Read at each connect, so fixing the file needs no restart; the value is never logged."""
        if self.password_file is None:
            return None
        try:
            lines = self.password_file.expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise TemporaryFailure(
                f"{self.label}: cannot read password_file {self.password_file}: {exc.strerror or exc}"
            ) from None
        return SecretStr(lines[0] if lines else "")

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.ca_file.expanduser()))
            except (OSError, ssl.SSLError) as exc:
                raise TemporaryFailure(f"{self.label}: cannot load ca_file {self.ca_file}: {exc}") from None
        if not self.implicit_tls and self.starttls == "opportunistic":
            # Opportunistic TLS only defeats passive eavesdropping (RFC 7435); insisting on a
            # valid certificate here would break the common local relay with a self-signed one.
            # AUTH is refused at config time unless TLS is 'required' or the server is local.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _arm_idle_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self.idle, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        task = asyncio.get_running_loop().create_task(self._quit_if_idle())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit_if_idle(self) -> None:
        async with self._lock:
            if self._idle_timer is None:
                await self._quit()

    async def _quit(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        import aiosmtplib

        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            client.close()

    async def close(self) -> None:
        self._cancel_idle_timer()
        for task in list(self._closing):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            await self._quit()


def translate(exc: BaseException, label: str) -> NoReturn:
    """Raise the delivery error ``exc`` stands for: 4xx and network trouble retry, 5xx do not."""
    import aiosmtplib

    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # A rejected login is the account's problem, not the recipient's: keep the mail and
        # retry, so fixing password_file (read at each connect) recovers everything queued.
        raise TemporaryFailure(f"{label}: login refused: {exc.code} {exc.message}") from None
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reason = f"{label}: server said {exc.code} {exc.message}"
        if 500 <= exc.code < 600:
            raise PermanentFailure(reason) from None
        raise TemporaryFailure(reason) from None
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        raise TemporaryFailure(f"{label}: timed out: {exc}") from None
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        raise TemporaryFailure(f"{label}: {exc}") from None
    if isinstance(exc, ssl.SSLError):
        # Before ValueError: a certificate verification error is both, and is a fixable setup problem.
        raise TemporaryFailure(f"{label}: TLS failed: {exc.reason or exc}") from None
    if isinstance(exc, ValueError):
        # aiosmtplib refuses an address it cannot send safely (e.g. non-ASCII without SMTPUTF8).
        raise PermanentFailure(f"{label}: {exc}") from None
    raise TemporaryFailure(f"{label}: {exc or type(exc).__name__}") from None
