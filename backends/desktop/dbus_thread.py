"""The helper thread that owns every D-Bus object and runs GLib's main context."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from fedmsg_notify.backend import BackendUnavailable

T = TypeVar("T")


class _DBusThread:
    """One thread owning every D-Bus object and running GLib's default main context.

    dbus-python delivers signals through GLib; nothing else in the daemon uses GLib,
    so this thread iterates the default context (via ctypes, like python-dbusmock
    does) and runs submitted jobs in between. ``g_main_context_wakeup`` interrupts a
    blocking iteration when a job arrives; GLib keeps the wakeup pending if nobody is
    polling yet, so none is lost. notify2 keeps its connection in module globals, so
    all desktop accounts share this one thread and never race on them.
    """

    _instance: ClassVar[_DBusThread | None] = None
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        try:
            glib = ctypes.CDLL("libglib-2.0.so.0")
        except OSError as exc:  # dbus-python's GLib main loop links it, so this is rare
            raise BackendUnavailable(f"the desktop backend needs GLib (libglib-2.0.so.0): {exc}") from exc
        self._iterate = glib.g_main_context_iteration
        self._iterate.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._iterate.restype = ctypes.c_int
        self._wakeup = glib.g_main_context_wakeup
        self._wakeup.argtypes = [ctypes.c_void_p]
        self._wakeup.restype = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.users = 0
        self._thread = threading.Thread(target=self._run, name="desktop-dbus", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls) -> _DBusThread:
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            cls._instance.users += 1
            return cls._instance

    def release(self) -> None:
        with _DBusThread._guard:
            self.users -= 1
            if self.users > 0:
                return
            _DBusThread._instance = None
        self._jobs.put(None)
        self._wakeup(None)
        self._thread.join(timeout=5)

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the thread and await its result without blocking the loop."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((function, future))
        self._wakeup(None)
        return await asyncio.wrap_future(future)

    def dispatch_pending(self) -> None:
        """Handle signals that already arrived (popups closed meanwhile) before deciding anything.

        Only from a job on this thread, which owns the context; bounded, in case a
        flood of signals keeps arriving.
        """
        for _ in range(1000):
            if not self._iterate(None, 0):
                return

    def _run(self) -> None:
        while True:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                function, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(function())
                except BaseException as exc:  # handed to the awaiting coroutine
                    future.set_exception(exc)
            # Blocks until a D-Bus message, a timeout source or a wakeup.
            self._iterate(None, 1)
