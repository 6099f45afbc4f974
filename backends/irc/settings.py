"""Where and as whom a session connects, and how IRC compares names.

The backend builds :class:`SessionSettings` from the account, with the secrets read
from their files; :class:`~fedmsg_notify.backends.irc.session.Session` only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


def fold(name: str) -> str:
    """Case-fold a nick or channel the way IRC servers compare them (RFC 1459 §2.2)."""
    return name.lower().translate(str.maketrans("[]\\~", "{}|^"))


def is_channel(target: str) -> bool:
    return target[:1] in "#&+!"


@dataclass(frozen=True)
class Server:
    """Where to connect, parsed from ``irc://host:port`` or ``ircs://host:port``."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Server:
        parts = urlsplit(url)
        if parts.scheme not in ("irc", "ircs"):
            raise ValueError(f"server must start with irc:// or ircs://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"server {url!r} names no host")
        if parts.username or parts.password:
            raise ValueError("put the server password in password_file, not in the server URL")
        tls = parts.scheme == "ircs"
        return cls(parts.hostname, parts.port or (6697 if tls else 6667), tls)

    def __str__(self) -> str:
        return f"{'ircs' if self.tls else 'irc'}://{self.host}:{self.port}"


@dataclass
class SessionSettings:
    """What a session needs from the account, secrets already read from their files."""

    server: Server
    nick: str
    alt_nicks: list[str] = field(default_factory=list)
    username: str | None = None
    realname: str = "fedmsg-notify"
    password: str | None = field(default=None, repr=False)
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    nickserv_password: str | None = field(default=None, repr=False)
    channel_keys: dict[str, str] = field(default_factory=dict, repr=False)
    channels: list[str] = field(default_factory=list)
    ca_file: str | None = None
    verify_tls: bool = True
    rate: float = 0.5
    burst: int = 4
    regain_interval: float = 60.0
    reconnect_min: float = 2.0
    reconnect_max: float = 300.0
    connect_timeout: float = 30.0
    # Below the engine's 30 s send timeout, so our own, clearer reason is what gets recorded.
    receipt_timeout: float = 20.0
    keepalive: float = 90.0
