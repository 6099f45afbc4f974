"""Reading an existing fedmsg configuration directory (``/etc/fedmsg.d/*.py``).

fedmsg configuration files are Python files that define ``config = dict(...)``.
fedmsg executes them in sorted file-name order and deep-merges the dicts, later
files winning; we do the same, so a host that already runs fedmsg needs no second
list of endpoints.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any


class FedmsgConfigError(Exception):
    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """fedmsg's recursive update: nested dicts merge, anything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_files(location: str | Path) -> list[Path]:
    path = Path(location).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FedmsgConfigError(str(path), "fedmsg configuration directory does not exist")
    return sorted(p for p in path.iterdir() if p.suffix == ".py" and p.is_file())


def load_fedmsg_config(location: str | Path) -> dict[str, Any]:
    """Execute every ``*.py`` in ``location`` (sorted) and deep-merge their ``config`` dicts."""
    merged: dict[str, Any] = {}
    for file in config_files(location):
        try:
            namespace = runpy.run_path(str(file), run_name="fedmsg_config")
        except Exception as exc:  # a broken admin file: report it with its name
            raise FedmsgConfigError(str(file), f"cannot execute: {type(exc).__name__}: {exc}") from exc
        config = namespace.get("config")
        if config is None:
            continue
        if not isinstance(config, dict):
            raise FedmsgConfigError(str(file), "'config' is not a dict")
        merged = deep_merge(merged, config)
    return merged


def endpoints_from(config: dict[str, Any]) -> list[str]:
    """Every endpoint of fedmsg's ``endpoints`` dict (name -> list of URLs), in order, once."""
    raw = config.get("endpoints") or {}
    if not isinstance(raw, dict):
        raise FedmsgConfigError("endpoints", "'endpoints' is not a dict of lists")
    seen: list[str] = []
    for urls in raw.values():
        for url in [urls] if isinstance(urls, str) else list(urls):
            if isinstance(url, str) and url not in seen:
                seen.append(url)
    return seen
