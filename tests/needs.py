"""What a test does when a server or library it needs is missing: skip on a developer's machine, fail in CI.

``scripts/test.sh`` installs every Debian server and Python extra the suite uses, so where
``CI`` is set a missing one is a broken set-up; a skip there would report it as a green run.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip (also at module level) with ``reason``; in CI fail with it instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: scripts/test.sh installs it, a skip would hide the gap)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`missing` when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"the Python module {name} is not installed ({exc}); pip install -e '.[test]'")
