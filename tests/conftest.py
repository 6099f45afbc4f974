"""Shared fixtures: loopback ports and endpoints, the bundled samples, the real fedmsg."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "notifier" / "data" / "samples.jsonl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def endpoint(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def samples() -> list[dict[str, Any]]:
    """Every line of the bundled sample file: ``{"id", "expect", "message"}``."""
    return [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def fedmsg_python() -> str:
    """The interpreter of the virtualenv holding the real ``fedmsg`` from PyPI (see scripts/test.sh)."""
    path = os.environ.get("FEDMSG_PYTHON") or str(ROOT / ".venv-fedmsg" / "bin" / "python")
    if not Path(path).exists():
        pytest.fail(f"the real fedmsg is needed for interop tests: {path} is missing (run scripts/test.sh)")
    return path


@pytest.fixture(autouse=True)
def _restore_log_record_factory() -> Iterator[None]:
    """`fedmsg_notify.commands.cli.main` installs log redaction process-wide; each test starts as it found it."""
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)
