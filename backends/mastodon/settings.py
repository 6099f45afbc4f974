"""``backend: mastodon`` settings: the account (instance, token file, hashtags) and a rule's options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fedmsg_notify.backend import AccountOptions
from fedmsg_notify.backends.mastodon.text import HASHTAG_RE
from fedmsg_notify.config.validation import StrictModel
from pydantic import Field, field_validator

Visibility = Literal["public", "unlisted", "private", "direct"]

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class MastodonAccount(AccountOptions):
    """``accounts.<name>`` for ``backend: mastodon``."""

    instance: str = Field(description="https://host of the instance (http only for 127.0.0.1/localhost)")
    token_file: Path = Field(description="file holding the account's access token (write:statuses)")
    visibility: Visibility = "public"
    # Hashtags appended per service, e.g. {bodhi: [fedora, bodhi]}; "*" applies to all.
    hashtags: dict[str, list[str]] = Field(default_factory=dict)
    # Under the engine's own send timeout (30 s), so a slow instance is reported by us, with a reason.
    timeout: float = Field(default=20.0, gt=0, le=600, description="seconds per HTTP request")

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        return instance_url(value)

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, value: Path) -> Path:
        path = value.expanduser()
        if not path.is_absolute():
            # The daemon runs from / under systemd; a relative path would silently
            # point somewhere else than where `check` looked.
            raise ValueError(f"token_file must be an absolute path, got '{value}'")
        return path

    @field_validator("hashtags")
    @classmethod
    def _hashtags(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for service, tags in value.items():
            for tag in tags:
                if not HASHTAG_RE.match(tag.removeprefix("#")):
                    raise ValueError(f"hashtag '{tag}' for '{service}' must be letters, digits or '_'")
        return {service: [tag.removeprefix("#") for tag in tags] for service, tags in value.items()}


class MastodonOptions(StrictModel):
    """Per-destination options in a rule: ``{via: firehose, visibility: unlisted, spoiler_text: ...}``."""

    visibility: Visibility | None = None
    # A content warning: shown instead of the text until the reader expands it.
    spoiler_text: str | None = Field(default=None, max_length=200)


def instance_url(value: str) -> str:
    """Validate an instance address: https, or http on the loopback only; no query or fragment."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"instance must be a URL like https://fosstodon.org, got '{value}'")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        # The access token travels in every request: plain HTTP would hand it to the network.
        raise ValueError(f"instance '{value}' must use https (http is allowed only for 127.0.0.1/localhost)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"instance '{value}' must be a plain address without credentials, query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
