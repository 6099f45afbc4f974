"""``backend: desktop`` settings: the account (``accounts.<name>``) and a rule's per-destination options."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from fedmsg_notify.backend import AccountOptions
from fedmsg_notify.config.validation import StrictModel
from pydantic import Field, field_validator

Urgency = Literal["low", "normal", "critical"]
# The notification spec's urgency hint values (a byte).
URGENCY_LEVELS: Mapping[str, int] = {"low": 0, "normal": 1, "critical": 2}

# An icon-theme name: what the icon naming spec allows (lowercase words joined by "-").
ICON_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


class DesktopAccount(AccountOptions):
    """``accounts.<name>`` for ``backend: desktop``."""

    # Shown by the notification server as the sender of every popup.
    app_name: str = Field(default="fedmsg-notify", min_length=1, max_length=64)
    # One slot is kept for the "N new messages" popup, hence at least 2.
    max_open: int = Field(default=100, ge=2, le=10_000, description="popups open at once")
    expire_ms: int = Field(default=-1, ge=-1, description="popup lifetime in ms; -1 server default, 0 never")
    # service → icon-theme name or absolute image file, overriding the built-in choice.
    icons: dict[str, str] = Field(default_factory=dict)
    # The command that opens a link for the "Open" action; default xdg-open, else gio open.
    open_with: list[str] | None = Field(default=None, min_length=1)

    @field_validator("icons")
    @classmethod
    def _icons(cls, value: dict[str, str]) -> dict[str, str]:
        for service, icon in value.items():
            if not (ICON_NAME_RE.match(icon) or Path(icon).expanduser().is_absolute()):
                raise ValueError(f"icon '{icon}' for '{service}' must be an icon name or an absolute file path")
        return {service: _icon_setting(icon) for service, icon in value.items()}


class DesktopOptions(StrictModel):
    """Per-destination options in a rule: ``{via: desktop, urgency: critical, expire_ms: 0}``."""

    urgency: Urgency = "normal"
    expire_ms: int | None = Field(default=None, ge=-1)


def _icon_setting(icon: str) -> str:
    path = Path(icon).expanduser()
    return path.as_uri() if path.is_absolute() else icon
