"""Delivery backends, registered explicitly.

Built-in backends are listed here, in one place; third-party ones register through
the ``fedmsg_notify.backends`` entry-point group (``name = package.module:Class``).
No directory scanning: a backend exists because it is named.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedmsg_notify.backend import Backend

log = logging.getLogger(__name__)

BUILTIN: dict[str, str] = {
    "console": "fedmsg_notify.backends.console:ConsoleBackend",
    "irc": "fedmsg_notify.backends.irc:IRCBackend",
    "email": "fedmsg_notify.backends.email:EmailBackend",
    "mastodon": "fedmsg_notify.backends.mastodon:MastodonBackend",
    "desktop": "fedmsg_notify.backends.desktop:DesktopBackend",
    "matrix": "fedmsg_notify.backends.matrix:MatrixBackend",
    "web": "fedmsg_notify.backends.web:WebBackend",
}


@cache
def _registry() -> dict[str, str]:
    found = dict(BUILTIN)
    for entry in entry_points(group="fedmsg_notify.backends"):
        if entry.name in found and found[entry.name] != entry.value:
            log.warning("entry point %s=%s ignored: '%s' is a built-in backend", entry.name, entry.value, entry.name)
            continue
        found[entry.name] = entry.value
    return found


def backend_names() -> list[str]:
    return sorted(_registry())


def backend_class(name: str) -> type[Backend]:
    """The class registered under ``name``; :class:`KeyError` if there is none."""
    if ":" in name:
        # A dotted path (``package.module:Class``): third-party and test backends that are
        # not registered. Import failures read as "unknown backend" to the config check.
        target = name
        try:
            module = importlib.import_module(target.partition(":")[0])
            found: type[Backend] = getattr(module, target.partition(":")[2])
        except (ImportError, AttributeError, ValueError) as exc:
            raise KeyError(name) from exc
        return found
    target = _registry()[name]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, attr)
    return cls
