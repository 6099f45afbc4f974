"""The IRC backend: one readable line per message in a channel or a private message.

One connection per account (see :mod:`.session`) serves every channel and nick the
rules name; :mod:`.lines` makes each rendered message a safe line that fits the
512-byte protocol limit. Secrets (server password, SASL, NickServ, channel keys)
are read from files when the configuration is loaded and held as ``SecretStr``,
so they never show in logs, errors or ``check`` output.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from fedmsg_notify.backend import (
    AccountOptions,
    Backend,
    BackendUnavailable,
    Item,
    PermanentFailure,
    install_hint,
    missing_modules,
)
from fedmsg_notify.config.validation import StrictModel
from fedmsg_notify.render.sanitize import irc_color, strip_irc_formatting
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from .lines import age_suffix, describe_age, fit, wire_safe
from .session import Session
from .settings import Server, SessionSettings, fold, is_channel

# RFC 2812 §2.3.1 nick grammar (letters, digits, the "special" characters, "-").
NICK_RE = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}$")
# A channel name has no space, comma, BELL or control character (RFC 2812 §1.3).
CHANNEL_RE = re.compile(r"^[#&+!][^\x00-\x20,\x07:]{1,49}$")


def _read_secret(path: Path, what: str) -> SecretStr:
    """The first line of ``path``; the error names the file, never its content."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {what} from {path}: {exc.strerror or exc}") from None
    value = text.strip("\r\n").splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise ValueError(f"{what} file {path} is empty")
    return SecretStr(value)


class SASLOptions(StrictModel):
    """SASL PLAIN login (IRCv3 sasl-3.1): the account name and a file holding its password."""

    mechanism: Literal["PLAIN"] = "PLAIN"
    username: str = Field(min_length=1)
    password_file: Path

    @field_validator("password_file")
    @classmethod
    def _readable(cls, value: Path) -> Path:
        _read_secret(value, "SASL password")  # the error points at this key
        return value


class ChannelKeyFile(StrictModel):
    key_file: Path

    @field_validator("key_file")
    @classmethod
    def _readable(cls, value: Path) -> Path:
        _read_secret(value, "channel key")
        return value


class IRCAccount(AccountOptions):
    """An IRC network connection: ``{backend: irc, server: ircs://irc.libera.chat:6697, nick: fedora-firehose}``."""

    server: str = Field(description="irc://host:port or ircs://host:port (TLS)")
    nick: str
    alt_nicks: list[str] = Field(default_factory=list, description="tried in order when nick is in use")
    username: str | None = Field(default=None, description="ident; defaults to the nick")
    realname: str = "fedmsg-notify bot"
    password_file: Path | None = Field(default=None, description="server password (PASS)")
    sasl: SASLOptions | None = None
    nickserv_password_file: Path | None = Field(default=None, description="NickServ IDENTIFY when SASL is not used")
    channels: list[str] = Field(default_factory=list, description="joined on connect; others are joined on first use")
    channel_keys: dict[str, SecretStr | ChannelKeyFile] = Field(
        default_factory=dict, description='{"#chan": key} or {"#chan": {key_file: path}}'
    )
    verify_tls: bool = True
    ca_file: Path | None = Field(default=None, description="CA bundle for ircs:// (e.g. a test or private CA)")
    notice: bool = Field(default=False, description="send NOTICE instead of PRIVMSG (bots, per RFC 2812 §3.3.2)")
    max_lines: int = Field(default=3, ge=1, le=10, description="continuation lines per message when split is on")
    old_after: float = Field(default=60.0, ge=0, description="seconds after which a line says how old it is")
    regain_interval: float = Field(default=60.0, gt=0)
    reconnect_min: float = Field(default=2.0, gt=0)
    reconnect_max: float = Field(default=300.0, gt=0)
    connect_timeout: float = Field(default=30.0, gt=0)

    _password: SecretStr | None = PrivateAttr(default=None)
    _sasl_password: SecretStr | None = PrivateAttr(default=None)
    _nickserv_password: SecretStr | None = PrivateAttr(default=None)
    _keys: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str) -> str:
        Server.parse(value)
        return value

    @field_validator("nick", "alt_nicks")
    @classmethod
    def _nicks(cls, value: str | list[str]) -> str | list[str]:
        for nick in [value] if isinstance(value, str) else value:
            if not NICK_RE.match(nick):
                raise ValueError(f"{nick!r} is not a valid IRC nick (letters, digits, -[]\\`_^{{|}}, at most 30)")
        return value

    @field_validator("password_file", "nickserv_password_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        # Checked here so the error points at the key; the secret is kept by _load_secrets.
        if value is not None:
            _read_secret(value, "password")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        for channel in value:
            if not CHANNEL_RE.match(channel):
                raise ValueError(f"{channel!r} is not a valid channel name (e.g. '#fedora-firehose')")
        return value

    @model_validator(mode="after")
    def _load_secrets(self) -> IRCAccount:
        if self.password_file:
            self._password = _read_secret(self.password_file, "server password")
        if self.sasl:
            self._sasl_password = _read_secret(self.sasl.password_file, "SASL password")
        if self.nickserv_password_file:
            self._nickserv_password = _read_secret(self.nickserv_password_file, "NickServ password")
        for channel, key in self.channel_keys.items():
            if not CHANNEL_RE.match(channel):
                raise ValueError(f"channel_keys: {channel!r} is not a valid channel name")
            if isinstance(key, ChannelKeyFile):
                secret = _read_secret(key.key_file, f"key of {channel}")
            else:
                secret = key
            if " " in secret.get_secret_value() or "," in secret.get_secret_value():
                raise ValueError(f"channel_keys: the key of {channel} contains a space or comma")
            self._keys[fold(channel)] = secret
        return self

    def session_settings(self, rate: float, burst: int) -> SessionSettings:
        def reveal(secret: SecretStr | None) -> str | None:
            return secret.get_secret_value() if secret else None

        return SessionSettings(
            server=Server.parse(self.server), nick=self.nick, alt_nicks=list(self.alt_nicks),
            username=self.username, realname=self.realname, password=reveal(self._password),
            sasl_username=self.sasl.username if self.sasl else None, sasl_password=reveal(self._sasl_password),
            nickserv_password=reveal(self._nickserv_password),
            channel_keys={channel: key.get_secret_value() for channel, key in self._keys.items()},
            channels=list(self.channels), ca_file=str(self.ca_file.expanduser()) if self.ca_file else None,
            verify_tls=self.verify_tls, rate=rate, burst=burst, regain_interval=self.regain_interval,
            reconnect_min=self.reconnect_min, reconnect_max=max(self.reconnect_max, self.reconnect_min),
            connect_timeout=self.connect_timeout,
        )


class IRCOptions(StrictModel):
    """Per-destination options: ``{notice: true}``, ``{split: true}``."""

    notice: bool | None = Field(default=None, description="NOTICE instead of PRIVMSG; default from the account")
    split: bool = Field(default=False, description="continuation lines instead of truncating a long message")


class IRCBackend(Backend):
    name: ClassVar[str] = "irc"
    connection_bound: ClassVar[bool] = True
    parts: ClassVar[tuple[str, ...]] = ("line",)
    line_parts: ClassVar[frozenset[str]] = frozenset({"line"})
    # The default pace is one line every two seconds after a burst of four, per
    # connection (servers count flood per client, not per channel). ngircd adds
    # penalty time per command and, measured, throttles a fast client to ~3 lines/s
    # after a short burst; Libera.Chat (solanum) tolerates a short burst and then
    # about a line a second before it queues or disconnects with "Excess Flood".
    # Half that rate leaves room for the receipt PINGs, JOINs and PONGs that share
    # the connection. Backlogs beyond this pace are coalesced (``summarise``).
    rate: ClassVar[float] = 0.5
    burst: ClassVar[int] = 4
    needs_recipient: ClassVar[bool] = True
    extra: ClassVar[str | None] = "irc"
    Account: ClassVar[type[AccountOptions]] = IRCAccount
    Options: ClassVar[type[StrictModel]] = IRCOptions
    # How long a delivery waits for a (re)connection before it goes back to the
    # outbox as a temporary failure.
    ready_wait: ClassVar[float] = 10.0

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        super().__init__(account_name, account)
        assert isinstance(account, IRCAccount)
        self.irc_account = account
        rate, burst = self.pace
        self.session = Session(account_name, account.session_settings(rate, burst))

    async def start(self) -> None:
        try:
            import irc.client_aio  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"the irc backend needs the irc library: {install_hint('irc')}") from exc
        await self.session.start()

    async def close(self) -> None:
        await self.session.close()

    async def send(self, item: Item) -> None:
        target = self._target(item)
        options = self._options(item)
        notice = options.notice if options.notice is not None else self.irc_account.notice
        command = "notice" if notice else "privmsg"
        await self.session.wait_ready(self.ready_wait)
        if is_channel(target):
            await self.session.join(target)
        lines = self.format(item, target, command, split=options.split)
        await self.session.deliver(command, target, lines)

    def preview(self, item: Item) -> dict[str, str]:
        """The lines as they would be sent now (before the server told us our host: its bound)."""
        options = self._options(item)
        notice = options.notice if options.notice is not None else self.irc_account.notice
        command = "notice" if notice else "privmsg"
        lines = self.format(item, self._target(item), command, split=options.split)
        return {"line": lines[0]} if len(lines) == 1 else {f"line {n}": line for n, line in enumerate(lines, 1)}

    def format(self, item: Item, target: str, command: str, *, split: bool) -> list[str]:
        """The protocol-safe lines for ``item``: age added, colours dropped where the
        channel forbids them, cut to what the server can relay."""
        text = environment_tag(item.topic) + wire_safe(item.rendered.get("line", ""))
        text += age_suffix(item.timestamp, threshold=self.irc_account.old_after)
        if not self.session.colours_allowed(target):
            text = strip_irc_formatting(text)
        if not text.strip():
            raise PermanentFailure(f"message {item.msg_id} rendered to an empty IRC line")
        budget = self.session.budget(command.upper(), target)
        return fit(text, budget, split=split, max_lines=self.irc_account.max_lines)

    @classmethod
    def recipient_problem(cls, to: str) -> str | None:
        if is_channel(to):
            return None if CHANNEL_RE.match(to) else f"'{to}' is not a valid IRC channel name"
        if NICK_RE.match(to):
            return None  # a private message to that nick
        return f"'{to}' is neither an IRC channel (starting with # or &) nor a nick"

    @classmethod
    def missing_libraries(cls, account: AccountOptions) -> list[str]:
        return missing_modules("irc")

    def _target(self, item: Item) -> str:
        target = item.destination.to or ""
        valid = CHANNEL_RE.match(target) if is_channel(target) else NICK_RE.match(target)
        if not valid:
            raise PermanentFailure(f"irc destination {item.destination}: {target!r} is neither a channel nor a nick")
        return target

    @staticmethod
    def _options(item: Item) -> IRCOptions:
        if isinstance(item.options, IRCOptions):
            return item.options
        try:
            return IRCOptions.model_validate(dict(item.options))
        except ValueError as exc:
            raise PermanentFailure(f"irc destination {item.destination}: bad options: {exc}") from None

    def summarise(self, items: Sequence[Item]) -> dict[str, str]:
        """One line for a backlog: how many, how far behind the bot is, and the counts
        per service with what most of them were ("backlog: 69 messages coalesced,
        4 min behind - buildsys: 57 more (build.state.change), bodhi: 12 more
        (update.comment)"). The engine calls this when the backlog outgrows the pace."""
        per_service = Counter[str]()
        kinds: dict[str, Counter[str]] = {}
        for item in items:
            per_service[item.service] += item.count
            kinds.setdefault(item.service, Counter())[_kind(item)] += item.count
        parts = []
        for service, count in per_service.most_common():
            kind = kinds[service].most_common(1)[0][0]
            parts.append(f"{service}: {count} more ({kind})" if kind else f"{service}: {count} more")
        oldest = min((item.timestamp for item in items if item.timestamp > 0), default=0.0)
        lag = max(0.0, time.time() - oldest) if oldest else 0.0
        # A lag of a few seconds is how a flood looks, not news; say it from a minute on.
        behind = f", {describe_age(lag)} behind" if lag >= SUMMARY_LAG else ""
        total = sum(per_service.values())
        # Count and lag first: if the line is truncated, the service list loses its tail.
        head = irc_color("backlog:", "backlog")
        return {"line": f"{head} {total} messages coalesced{behind} - {', '.join(parts)}"}


SUMMARY_LAG = 60.0
# The environments real buses carry besides prod; "test"/"local" are for test buses.
MARKED_ENVS = frozenset({"stg", "dev"})


def environment_tag(topic: str) -> str:
    """Bold "[stg] " for a staging or dev message (``org.fedoraproject.stg.…``); "" for production."""
    # The environment is the first topic part naming one (as the bus's split_topic finds it).
    env = next((part for part in topic.split(".") if part in ("prod", "stg", "dev", "test", "local")), "")
    return f"\x02[{env}]\x02 " if env in MARKED_ENVS else ""


def _kind(item: Item) -> str:
    """What most of a service's backlog was, from the topic: "build.state.change"."""
    topic: Any = item.topic
    service = f".{item.service}."
    if isinstance(topic, str) and service in topic:
        return topic.split(service, 1)[1]
    return ""
