"""The filters service files use: tolerant helpers that turn message values into names and text.

Metadata is best effort, and a message with an unexpected shape must produce "no value",
never an exception or a Python repr: every filter here refuses mappings and lists where
it expects a scalar (``shorten`` of a dict is ``""``, ``commas`` skips the dicts of a list).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from email.utils import parseaddr
from typing import Any

from jinja2 import Undefined

_OPENID = re.compile(r"^(?:https?://)?([A-Za-z0-9_.-]+)\.id\.fedoraproject\.org/?$")
_NVR = re.compile(r"^(?P<name>.+)-(?P<version>[^-]+)-(?P<release>[^-]+)$")
# An rpm file name: name-version-release.arch.rpm (arch is src, noarch, x86_64, ...).
_RPM_FILE = re.compile(r"\.(?:src|noarch|x86_64|i[3-6]86|aarch64|armv7hl|ppc64le|ppc64|s390x)(?:\.rpm)?$")


class SlotError(ValueError):
    """A value that cannot stand in a sentence or a URL (a mapping, list, None or empty string)."""


def is_scalar(value: Any) -> bool:
    """A value that reads well in a sentence or a URL: a non-empty string or a number (not a bool)."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fas_user(value: Any) -> str | None:
    """A FAS username from a username, FAS OpenID URL or ``@fedoraproject.org`` address.

    Other e-mail addresses would need an account-system lookup (impossible offline), so
    they give ``None`` rather than a guess.
    """
    if not isinstance(value, str) or not value:
        return None
    text: str = value.strip()
    match = _OPENID.match(text)
    if match:
        return str(match.group(1))
    if "@" in text:
        local, _, domain = text.partition("@")
        return local if domain.lower() == "fedoraproject.org" and local else None
    if "/" in text or " " in text or not text or any(ch in text for ch in "{}[]<>\"'(),:;"):
        return None
    return text


def nvr_name(value: Any) -> str | None:
    """``foo-bar-1.2-3.fc30`` → ``foo-bar`` (a plain name without version passes through)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _RPM_FILE.sub("", value.strip())
    match = _NVR.match(text)
    return match.group("name") if match else text


# Hostile messages can nest lists arbitrarily deep or carry huge ones; names live at
# most a few levels down, and no event involves more people or packages than this.
_FLATTEN_DEPTH = 4
_FLATTEN_ITEMS = 10_000


def _flatten(value: Any) -> list[Any]:
    """Leaves of nested lists, iteratively and bounded.

    A mapping is a leaf, not a list of its keys: ``{"username": "ralph"}`` where a list of
    names belongs must not become the names "username"; :func:`names` then drops it.
    """
    out: list[Any] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and len(out) < _FLATTEN_ITEMS:
        item, depth = stack.pop()
        if item is None or isinstance(item, Undefined):
            continue
        if isinstance(item, (str, bytes, dict)) or not isinstance(item, Iterable):
            out.append(item)
        elif depth < _FLATTEN_DEPTH:
            children = list(item)[:_FLATTEN_ITEMS]
            stack.extend((child, depth + 1) for child in reversed(children))
    return out


def compact(value: Any) -> list[Any]:
    """Flatten nested lists and drop empty values (``None``, ``""``, undefined)."""
    return [item for item in _flatten(value) if item not in (None, "") and not isinstance(item, Undefined)]


def names(value: Any) -> tuple[str, ...]:
    """Flatten, drop empties, deduplicate and sort: the canonical shape of usernames/packages."""
    # Only strings count: a dict or number where a name belongs is a shape the service
    # file did not expect, and "{'name': ...}" must never become a username.
    return tuple(sorted({item.strip() for item in compact(value) if isinstance(item, str) and item.strip()}))


# A package (source rpm, module or container) name: no spaces, slashes, quotes or brackets.
_PACKAGE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+~-]*$")


def usernames_only(values: tuple[str, ...]) -> tuple[str, ...]:
    """The FAS usernames among ``values`` (OpenIDs and fedoraproject.org addresses become names)."""
    if all(fas_user(value) == value for value in values):
        return values  # the common case: nothing to change, no new tuple
    return tuple(sorted({user for user in map(fas_user, values) if user}))


def packages_only(values: tuple[str, ...]) -> tuple[str, ...]:
    """The values that can be package names (a title or a path where a package belongs is dropped)."""
    if all(_PACKAGE.match(value) for value in values):
        return values
    return tuple(value for value in values if _PACKAGE.match(value))


def https(value: Any) -> str | None:
    """Force ``https://`` (Fedora's web apps redirect plain http)."""
    if not isinstance(value, str) or not value:
        return None
    return "https://" + value[len("http://") :] if value.startswith("http://") else value


def strip_suffix(value: Any, suffix: str) -> Any:
    if isinstance(value, str) and value.endswith(suffix):
        return value[: -len(suffix)]
    return value


def strip_prefix(value: Any, prefix: str) -> Any:
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix) :]
    return value


def shorten(value: Any, length: int = 60) -> str:
    """First line of ``value``, cut to ``length`` characters with an ellipsis (``""`` for non-scalars)."""
    if not is_scalar(value):
        return ""
    text = str(value).strip()
    text = " ".join(text.splitlines()[0].split()) if text else ""
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def commas(items: Any) -> str:
    """``a``, ``a and b``, ``a, b and c``: lists read as English in sentences (scalars only).

    A mapping where a list belongs is a shape error (:class:`SlotError`), not its keys.
    """
    if isinstance(items, dict):
        raise SlotError("commas of a mapping")
    values = [" ".join(str(item).split()) for item in compact(items) if is_scalar(item)]
    if len(values) <= 1:
        return "".join(values)
    return ", ".join(values[:-1]) + " and " + values[-1]


def email_address(value: Any) -> str | None:
    """``"Jane Doe" <jane@example.org>`` → ``jane@example.org``."""
    if not isinstance(value, str) or not value:
        return None
    address = parseaddr(value)[1]
    return address or None


def email_name(value: Any) -> str | None:
    """``"Jane Doe" <jane@example.org>`` → ``Jane Doe`` (the address when there is no name)."""
    if not isinstance(value, str) or not value:
        return None
    name, address = parseaddr(value)
    return name or address or None


def startingwith(value: Any, prefix: str) -> bool:
    return isinstance(value, str) and value.startswith(prefix)


FILTERS: dict[str, Callable[..., Any]] = {
    "email_address": email_address,
    "email_name": email_name,
    "fas_user": fas_user,
    "nvr_name": nvr_name,
    "compact": compact,
    "names": names,
    "https": https,
    "strip_suffix": strip_suffix,
    "strip_prefix": strip_prefix,
    "shorten": shorten,
    "commas": commas,
}
