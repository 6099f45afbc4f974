"""A real Synapse homeserver for the Matrix backend's tests, and a second user to read rooms.

Synapse comes from PyPI in its own virtualenv (``.venv-synapse``, made by
``scripts/setup.d/synapse.sh``; ``SYNAPSE_PYTHON`` overrides). The config is the one
``--generate-config`` writes (SQLite), bound to 127.0.0.1 on a free port, with no key
servers (no internet). Message rate limits stay at Synapse's defaults (``rc_message``
0.2/s, burst 10); only registration and login limits are raised, so the tests can make
their users quickly. Users are registered through the shared-secret admin API.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0


def synapse_python() -> str | None:
    candidate = os.environ.get("SYNAPSE_PYTHON") or str(ROOT / ".venv-synapse" / "bin" / "python")
    return candidate if Path(candidate).exists() else None


class Synapse:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        python = synapse_python()
        if python is None:
            raise RuntimeError("no Synapse: run scripts/test.sh (it makes .venv-synapse) or set SYNAPSE_PYTHON")
        self.python = python
        self.config = folder / "homeserver.yaml"
        self._generate()

    def _generate(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [self.python, "-m", "synapse.app.homeserver", "--server-name", "localhost", "--config-path",
             str(self.config), "--data-directory", str(self.folder), "--generate-config", "--report-stats=no"],
            check=True, capture_output=True, timeout=120, cwd=self.folder,
        )
        config = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        config["listeners"] = [{"port": self.port, "type": "http", "tls": False, "bind_addresses": ["127.0.0.1"],
                                "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}]
        config["trusted_key_servers"] = []
        config["suppress_key_server_warning"] = True
        config["enable_metrics"] = False
        # Users are made quickly; the message limits (rc_message) stay at their defaults.
        fast = {"per_second": 1000, "burst_count": 1000}
        config["rc_registration"] = fast
        config["rc_login"] = {"address": fast, "account": fast, "failed_attempts": fast}
        config["log_config"] = None
        config.pop("log_config")
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.secret = str(config["registration_shared_secret"])

    def start(self) -> None:
        with (self.folder / "synapse.out").open("ab") as log:
            self.proc = subprocess.Popen([self.python, "-m", "synapse.app.homeserver", "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synapse exited: {(self.folder / 'synapse.out').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/_matrix/client/versions", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("synapse did not answer within 90 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def register(self, name: str, password: str = "pw-for-tests") -> str:
        """A new user through the shared-secret admin API; returns its access token."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        nonce = httpx.get(endpoint, timeout=10).json()["nonce"]
        mac = hmac.new(self.secret.encode(), "\x00".join((nonce, name, password, "notadmin")).encode(),
                       hashlib.sha1)
        body = {"nonce": nonce, "username": name, "password": password, "admin": False,
                "mac": mac.hexdigest()}
        response = httpx.post(endpoint, json=body, timeout=30)
        response.raise_for_status()
        return str(response.json()["access_token"])


class Reader:
    """A second user reading (and setting up) rooms through the client-server API."""

    def __init__(self, synapse: Synapse, token: str, user_id: str) -> None:
        self.url = synapse.url + "/_matrix/client/v3"
        self.user_id = user_id
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        for _ in range(20):
            response = self.http.request(method, self.url + path, json=body)
            if response.status_code == 429:
                time.sleep(response.json().get("retry_after_ms", 1000) / 1000)
                continue
            response.raise_for_status()
            return response.json()
        raise RuntimeError(f"{method} {path}: still rate limited")

    def create_room(self, alias: str | None = None, **extra: Any) -> str:
        body: dict[str, Any] = {"preset": "public_chat", **extra}
        if alias:
            body["room_alias_name"] = alias
        return str(self.call("POST", "/createRoom", body)["room_id"])

    def join(self, room: str) -> str:
        return str(self.call("POST", f"/join/{urllib.parse.quote(room)}", {})["room_id"])

    def invites(self) -> list[str]:
        sync = self.call("GET", "/sync?timeout=0")
        return list(sync.get("rooms", {}).get("invite", {}))

    def messages(self, room: str) -> list[dict[str, Any]]:
        """Every m.room.message event in ``room``, oldest first."""
        events: list[dict[str, Any]] = []
        token = ""
        while True:
            query = f"?dir=f&limit=1000{'&from=' + token if token else ''}"
            page = self.call("GET", f"/rooms/{urllib.parse.quote(room)}/messages{query}")
            events += [e for e in page.get("chunk", []) if e.get("type") == "m.room.message"]
            if not page.get("end") or not page.get("chunk"):
                return events
            token = page["end"]

    def close(self) -> None:
        self.http.close()


if __name__ == "__main__":  # manual check: python -m tests.synapseserver DIR
    server = Synapse(Path(sys.argv[1]))
    server.start()
    print(server.url, server.register("alice"))
    server.stop()
