"""The Matrix backend: the firehose room and direct messages on Fedora's chat (fedora.im).

An account is one Matrix user (``{backend: matrix, homeserver: https://…, user_id:
"@bot:server", token_file: PATH}``, or ``password_file`` and a login whose token is
cached in the state directory). A destination is a room alias (joined on first use),
a room id, or a user (a direct-message room, found in ``m.direct`` or created once).

* **Content**: the ``matrix`` templates render a plain ``body`` and an HTML ``html``
  part (autoescaped) that becomes ``formatted_body``; posts are ``m.notice`` unless
  ``msgtype: m.text`` is configured (notices do not ping people).
* **Never twice**: each delivery's transaction id is derived from (msg_id, destination),
  so a PUT repeated after a crash between send and commit is the same event.
* **Rate limits**: the default pace stays under Synapse's ``rc_message`` (0.2/s, burst
  10); a 429 / ``M_LIMIT_EXCEEDED`` is a temporary failure after ``retry_after_ms``, and
  the engine coalesces the backlog with the IRC backend's summary line.
* **Encrypted rooms** are refused, permanently, naming the room.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from fedmsg_notify.backend import AccountOptions, Backend, Item, PermanentFailure
from fedmsg_notify.config.validation import StrictModel
from pydantic import Field, field_validator, model_validator

from ..summary import backlog_line
from .client import Credentials, Session, TokenRejected
from .content import USER_ID_RE, MsgType, destination_kind, event_content, homeserver_url, summary_parts, transaction_id

log = logging.getLogger(__name__)

__all__ = ["MatrixAccount", "MatrixBackend", "MatrixOptions"]


def default_state_dir() -> Path:
    """systemd's ``StateDirectory=``, else where the state database lives by default."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    from fedmsg_notify.config.model import default_state_path

    return default_state_path().parent


class MatrixAccount(AccountOptions):
    """``accounts.<name>`` for ``backend: matrix``."""

    homeserver: str = Field(description="https://host of the homeserver (http only for 127.0.0.1/localhost)")
    user_id: str = Field(description='the bot\'s Matrix id, "@bot:server"')
    token_file: Path | None = Field(default=None, description="file holding an access token")
    password_file: Path | None = Field(default=None, description="file holding the password (login once, token cached)")
    device_id: str = Field(default="FEDMSGNOTIFY", pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
                           description="stable device id for the password login")
    state_dir: Path | None = Field(default=None, description="where a login's token is cached")
    msgtype: MsgType = "m.notice"
    timeout: float = Field(default=20.0, gt=0, le=600, description="seconds per HTTP request")

    @field_validator("homeserver")
    @classmethod
    def _homeserver(cls, value: str) -> str:
        return homeserver_url(value)

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        if not USER_ID_RE.match(value):
            raise ValueError(f"user_id must look like '@bot:server' (lower-case localpart), got '{value}'")
        return value

    @field_validator("token_file", "password_file", "state_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_absolute():
            # The daemon runs from / under systemd: a relative path would point elsewhere than `check` looked.
            raise ValueError(f"must be an absolute path, got '{value}'")
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _one_secret(self) -> MatrixAccount:
        if (self.token_file is None) == (self.password_file is None):
            raise ValueError("give exactly one of token_file (an access token) or password_file (login once)")
        return self

    def credentials(self, account_name: str) -> Credentials:
        cache = None
        if self.password_file is not None:
            cache = (self.state_dir or default_state_dir()) / f"matrix-{account_name}.token"
        return Credentials(homeserver=self.homeserver, user_id=self.user_id, device_id=self.device_id,
                           token_file=self.token_file, password_file=self.password_file,
                           token_cache=cache, timeout=self.timeout)


class MatrixOptions(StrictModel):
    """Per-destination options in a rule: ``{via: fedora-chat, to: "#room:server", msgtype: m.text}``."""

    msgtype: MsgType | None = None


class MatrixBackend(Backend):
    name: ClassVar[str] = "matrix"
    parts: ClassVar[tuple[str, ...]] = ("body", "html")
    html_parts: ClassVar[frozenset[str]] = frozenset({"html"})
    # Under Synapse's default rc_message (0.2/s, burst 10), with room for joins and DM
    # creation, which the same limiter counts. Backlogs beyond this are coalesced.
    rate: ClassVar[float] = 0.15
    burst: ClassVar[int] = 8
    supports_digest: ClassVar[bool] = True
    needs_recipient: ClassVar[bool] = True
    extra: ClassVar[str | None] = "matrix"
    Account: ClassVar[type[AccountOptions]] = MatrixAccount
    Options: ClassVar[type[StrictModel]] = MatrixOptions

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        super().__init__(account_name, account)
        assert isinstance(account, MatrixAccount)
        self.settings: MatrixAccount = account
        self.session = Session(account_name, account.credentials(account_name))

    async def start(self) -> None:
        await self.session.start()

    async def _room(self, to: str) -> str:
        try:
            return await self.session.room_for(to)
        except TokenRejected:
            self.session.forget_token()
            await self.session.close()
            raise

    async def close(self) -> None:
        await self.session.close()

    async def send(self, item: Item) -> None:
        if self.session.client is None:
            await self.session.start()
        to = self._target(item)
        content = self.content(item)
        room = await self._room(to)
        txn = transaction_id(item.msg_id, item.destination.key, content["body"] if item.count > 1 else "")
        try:
            event = await self.session.send(room, content, txn, to)
        except TokenRejected:
            # Logged out or the token revoked: start afresh (a new login for password accounts).
            self.session.forget_token()
            await self.session.close()
            raise
        except PermanentFailure:
            # Kicked, or the power levels changed: look the room up afresh next time.
            self.session.rooms.pop(to, None)
            raise
        log.debug("%s: posted %s to %s as %s", self.account_name, item.msg_id, to, event)

    def content(self, item: Item) -> dict[str, str]:
        """The ``m.room.message`` content for ``item``."""
        body = item.rendered.get("body", "")
        if not body.strip():
            raise PermanentFailure(f"template for {item.topic} rendered an empty Matrix body")
        return event_content(body, item.rendered.get("html", ""), self._options(item).msgtype or self.settings.msgtype)

    def preview(self, item: Item) -> dict[str, str]:
        return self.content(item)

    def summarise(self, items: Sequence[Item]) -> dict[str, str]:
        """One message for a backlog, the same line IRC shows ("backlog: 37 messages coalesced…")."""
        return summary_parts(backlog_line(items))

    def _target(self, item: Item) -> str:
        to = item.destination.to or ""
        try:
            destination_kind(to)
        except ValueError as exc:
            raise PermanentFailure(f"matrix destination {item.destination}: {exc}") from None
        return to

    @staticmethod
    def _options(item: Item) -> MatrixOptions:
        try:
            return MatrixOptions.model_validate(dict(item.options))
        except ValueError as exc:
            raise PermanentFailure(f"matrix destination {item.destination}: bad options: {exc}") from None
