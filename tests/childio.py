"""Reading a child process's output with a deadline: a hung or silent child fails the test, it never hangs it."""

from __future__ import annotations

import queue
import threading
import time
from typing import IO, AnyStr


def read_lines(stream: IO[AnyStr], count: int, timeout: float = 30.0) -> list[AnyStr]:
    """The next ``count`` lines of ``stream`` (a child's pipe); AssertionError after ``timeout`` or at end of output.

    A thread does the blocking reads; when the test gives up it kills the child, which ends
    the read with end-of-file and so the thread.
    """
    got: queue.Queue[AnyStr] = queue.Queue()

    def pump() -> None:
        for _ in range(count):
            line = stream.readline()
            got.put(line)
            if not line:
                return

    threading.Thread(target=pump, name="read_lines", daemon=True).start()
    lines: list[AnyStr] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        try:
            line = got.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"read {len(lines)} of {count} lines in {timeout} s: {lines!r}") from None
        if not line:
            raise AssertionError(f"the child closed its output after {len(lines)} of {count} lines: {lines!r}")
        lines.append(line)
    return lines
