"""What a popup shows: text, icon, urgency, link, and the "N new messages" popup.

Pure functions of the item and the account, run on the event loop.
"""

from __future__ import annotations

import html
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedmsg_notify.backend import Item
from fedmsg_notify.backends.desktop.settings import ICON_NAME_RE, URGENCY_LEVELS, DesktopAccount, DesktopOptions
from fedmsg_notify.render import sanitize
from pydantic import ValidationError

log = logging.getLogger(__name__)

# Popup text limits: shells truncate the summary to one line anyway, and a 1 MB
# comment from the bus must not reach the shell at all.
MAX_SUMMARY = 200
MAX_BODY = 1000
# Lines listed in a "23 new koji messages" popup before "…and 18 more".
SUMMARY_LINES = 5
# Service names as the bus spells them versus as people know them.
SERVICE_NAMES: Mapping[str, str] = {"buildsys": "koji", "fedora_elections": "elections", "fedbadges": "badges"}

# The shipped icons (package data of fedmsg_notify.data; resolved at import, not per popup).
ICONS_DIR = Path(str(resources.files("fedmsg_notify.data"))) / "icons"
APP_ICON = "fedmsg-notify.svg"
GENERIC_ICON = "dialog-information"
# fedmsg.meta's icons are URLs, which notification servers do not load. The service
# icon's file name picks a freedesktop icon-naming-spec name instead (present in every
# icon theme); unknown ones get the shipped fedmsg-notify icon.
ICON_NAMES: Mapping[str, str] = {
    "abrt": "dialog-warning",
    "anitya": "software-update-available",
    "askbot": "dialog-question",
    "badges": "emblem-favorite",
    "bodhi": "system-software-update",
    "bugzilla": "dialog-warning",
    "copr": "applications-development",
    "downloads": "folder-download",
    "elections": "emblem-default",
    "fedocal": "x-office-calendar",
    "git-logo": "applications-development",
    "github": "applications-development",
    "hotness": "software-update-available",
    "jenkins": "applications-engineering",
    "koji": "applications-engineering",
    "koschei": "applications-engineering",
    "mailman": "mail-message-new",
    "mediawiki": "accessories-text-editor",
    "meetbot": "user-available",
    "nagios": "network-server",
    "openqa": "applications-engineering",
    "pagure": "applications-development",
    "pungi": "media-optical",
    "taskotron": "applications-engineering",
    "zabbix": "network-server",
}


@dataclass(frozen=True, slots=True)
class Popup:
    """One notification, before the server's capabilities decide its final form."""

    summary: str
    body: str
    icon: str
    urgency: int
    expire_ms: int
    # Opened by the "Open" action; http(s) only.
    link: str | None = None
    # Popups with the same key replace each other while open (the same update or build).
    key: str | None = None
    # The short line and the service label this popup adds to an "N new messages" popup.
    line: str = ""
    label: str = ""
    count: int = 1


def service_label(service: str) -> str:
    return SERVICE_NAMES.get(service, service)


def web_link(value: Any) -> str | None:
    """``value`` if it is an http(s) URL; a ``javascript:`` or ``file:`` link from the bus is never opened.

    Spaces, controls (NUL) and other unprintable characters make it no link at all:
    it is passed to a browser and, for some servers, written into the popup's markup.
    """
    if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def popup_icon(meta_icon: Any, service: str, overrides: Mapping[str, str] | None = None) -> str:
    """An icon a notification server can load: an icon-theme name or a ``file://`` URI.

    Servers only take theme names and local files (spec: "file:// is the only URI
    scheme supported"); fedmsg.meta's ``https://…/koji.png`` is mapped to a theme name
    by its file name, and anything unknown gets the shipped fedmsg-notify icon.
    """
    if overrides and service in overrides:
        return overrides[service]
    if isinstance(meta_icon, str) and meta_icon:
        if meta_icon.startswith("file://"):
            return meta_icon
        if meta_icon.startswith("/"):
            return Path(meta_icon).as_uri()
        if ICON_NAME_RE.match(meta_icon):
            return meta_icon
        stem = Path(urlsplit(meta_icon).path).stem
        if stem in ICON_NAMES:
            return ICON_NAMES[stem]
    if service_label(service) in ICON_NAMES:
        return ICON_NAMES[service_label(service)]
    shipped = ICONS_DIR / APP_ICON
    return shipped.as_uri() if shipped.exists() else GENERIC_ICON


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def build_popup(item: Item, account: DesktopAccount) -> Popup:
    """The popup for ``item``: rendered text, the destination's urgency and expiry, icon, link, object key."""
    try:
        options = DesktopOptions.model_validate(dict(item.options)) if item.options else DesktopOptions()
    except ValidationError as exc:
        # Options stored with the delivery by an older configuration: show it plainly
        # rather than retry a popup that can never become valid.
        log.warning("%s: ignoring invalid popup options %s: %s", item.destination, dict(item.options),
                    exc.errors()[0].get("msg", exc))
        options = DesktopOptions()
    meta = item.meta or {}
    summary = _cut(sanitize.one_line(sanitize.plain_text(item.rendered.get("summary", ""))), MAX_SUMMARY)
    body = _cut(sanitize.plain_text(item.rendered.get("body", "")).strip(), MAX_BODY)
    label = service_label(item.service)
    if not summary:
        # A template without a summary block still must not show an empty popup.
        summary, body = _cut(sanitize.one_line(body), MAX_SUMMARY) or f"{label}: {item.topic}", ""
    link = web_link(meta.get("link"))
    return Popup(
        summary=summary,
        body=body,
        icon=popup_icon(meta.get("icon"), item.service, account.icons),
        urgency=URGENCY_LEVELS[options.urgency],
        expire_ms=options.expire_ms if options.expire_ms is not None else account.expire_ms,
        link=link,
        # Summaries of a flood (count > 1) stand for many objects: they never replace.
        key=f"{item.service} {link}" if link and item.count == 1 else None,
        line=summary,
        label=label,
        count=item.count,
    )


def flood_parts(entries: Sequence[tuple[str, str, int]]) -> dict[str, str]:
    """The "23 new koji messages" popup for ``(label, line, count)`` entries, oldest first."""
    total = sum(count for _, _, count in entries)
    per_label = Counter[str]()
    for label, _, count in entries:
        per_label[label] += count
    if len(per_label) == 1:
        summary = f"{total} new {next(iter(per_label))} message{'s' if total != 1 else ''}"
    else:
        detail = ", ".join(f"{label} {count}" for label, count in per_label.most_common())
        summary = f"{total} new messages ({detail})"
    # The newest first: that is what the user missed most recently.
    recent = [(line, count) for _, line, count in reversed(entries) if line][:SUMMARY_LINES]
    lines = [f"• {_cut(line, 120)}" for line, _ in recent]
    # A listed line may itself stand for several messages (an earlier summary).
    shown = sum(count for _, count in recent)
    if total > shown:
        lines.append(f"…and {total - shown} more")
    return {"summary": summary, "body": "\n".join(lines)}


def body_for_server(popup: Popup, caps: frozenset[str]) -> str:
    """The body as this server must receive it: escaped for markup servers, plain otherwise.

    Without actions the link goes into the body, clickable where the server
    advertises ``body-hyperlinks``, so it can still be reached.
    """
    markup = "body-markup" in caps
    body = html.escape(popup.body, quote=False) if markup else popup.body
    if popup.link and "actions" not in caps and popup.link not in popup.body:
        if markup and "body-hyperlinks" in caps:
            link = f'<a href="{html.escape(popup.link, quote=True)}">{html.escape(popup.link, quote=False)}</a>'
        else:
            link = html.escape(popup.link, quote=False) if markup else popup.link
        body = f"{body}\n{link}" if body else link
    return body


def _item_line(item: Item) -> str:
    summary = sanitize.one_line(sanitize.plain_text(item.rendered.get("summary", "")))
    return summary or item.topic
