"""A private RabbitMQ node for the AMQP bus tests, and the real fedora-messaging as a publisher.

:class:`RabbitMQ` runs Debian's ``rabbitmq-server`` on 127.0.0.1 with a node name, ports and
a data directory of its own (owned by the ``rabbitmq`` user, which the server script drops
to), optionally with a TLS listener that requires client certificates. ``restart()`` keeps
the ports and the data (a broker restart mid-stream). :func:`fedora_publish` publishes with
``fedora_messaging.api.publish`` in a child process configured by a TOML file, as an outside
service would.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.ircserver import free_port
from tests.needs import missing

SERVER = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
CTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def rabbitmq_available() -> bool:
    return os.path.exists(SERVER) and os.path.exists(CTL) and _rabbitmq_user() is not None


def _rabbitmq_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        return None


@dataclass
class RabbitMQ:
    """One RabbitMQ node; ``tls`` is (CA file, server cert chain, server key) to add an amqps listener."""

    tls: tuple[Path, Path, Path] | None = None
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"fnt{uuid.uuid4().hex[:8]}@localhost")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rmq-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def tls_url(self) -> str:
        return f"amqps://guest:guest@localhost:{self.tls_port}/%2F"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq"),
        }

    def _write_files(self) -> None:
        os.chmod(self.workdir, 0o755)
        (self.workdir / "plugins").write_text("[].\n")
        lines = [
            f"listeners.tcp.default = {self.port}",
            "loopback_users = none",
            # Tests publish faster than a laptop disk; no flow control on a tiny free-disk margin.
            "disk_free_limit.absolute = 1MB",
        ]
        if self.tls is not None:
            ca, cert, key = self.tls
            for path in (ca, cert, key):
                shutil.copy(path, self.workdir / path.name)
            lines += [
                f"listeners.ssl.default = {self.tls_port}",
                f"ssl_options.cacertfile = {self.workdir / ca.name}",
                f"ssl_options.certfile = {self.workdir / cert.name}",
                f"ssl_options.keyfile = {self.workdir / key.name}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = true",
            ]
        (self.workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        user = _rabbitmq_user()
        assert user is not None
        for path in [self.workdir, *self.workdir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)

    def ctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CTL, "-n", self.name, "-q", *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = 60.0) -> None:
        self._write_files()
        with (self.workdir / "server.out").open("ab") as log:
            self.process = subprocess.Popen([SERVER], env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.ctl("await_startup", timeout=timeout).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"rabbitmq-server did not start: {tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.ctl("stop", timeout=60)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages in ``queue``."""
        out = self.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged").stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] == queue:
                return int(fields[1]), int(fields[2])
        raise KeyError(f"no queue {queue!r} in {out!r}")

    def bound_queues(self, exchange: str = "amq.topic") -> set[str]:
        """Queues bound to ``exchange`` (a consumer is ready once its queue shows up here)."""
        out = self.ctl("list_bindings", "source_name", "destination_name").stdout
        return {
            fields[1]
            for fields in (line.split() for line in out.splitlines())
            if len(fields) == 2 and fields[0] == exchange
        }

    def close(self) -> None:
        self.stop()
        # The node's processes (epmd aside) are gone; the data dir is ours to remove.
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def rabbitmq_node(tls: tuple[Path, Path, Path] | None = None) -> Iterator[RabbitMQ]:
    if not rabbitmq_available():
        missing("rabbitmq-server is not installed (scripts/setup.d/rabbitmq.sh installs it)")
    node = RabbitMQ(tls=tls)
    try:
        node.start()
        yield node
    finally:
        node.close()


PUBLISH_SCRIPT = r"""
import json, sys
from fedora_messaging import api, message
from fedora_messaging.config import conf
conf.load_config(sys.argv[1])
conf.setup_logging()
for line in sys.stdin:
    spec = json.loads(line)
    cls = message.get_class(spec["schema"])
    msg = cls(topic=spec["topic"], body=spec["body"])
    if spec.get("id"):
        msg.id = spec["id"]
    api.publish(msg)
print("published", flush=True)
"""


def fedora_messaging_config(tmp: Path, url: str, *, queue: str | None = None) -> Path:
    """A fedora-messaging TOML config that publishes to ``amq.topic`` on ``url``."""
    path = tmp / f"fm-{uuid.uuid4().hex[:6]}.toml"
    queues = ""
    if queue:
        queues = (
            f'[queues."{queue}"]\ndurable = true\nauto_delete = false\nexclusive = false\narguments = {{}}\n'
            f'[[bindings]]\nqueue = "{queue}"\nexchange = "amq.topic"\nrouting_keys = ["#"]\n'
        )
    path.write_text(
        f'amqp_url = "{url}"\npublish_exchange = "amq.topic"\npassive_declares = false\n'
        f'callback = "fedora_messaging.example:printer"\n'
        f'[client_properties]\napp = "fedmsg-notify tests"\n{queues}'
        "[log_config]\nversion = 1\ndisable_existing_loggers = true\n"
        '[log_config.handlers.console]\nclass = "logging.StreamHandler"\nstream = "ext://sys.stderr"\n'
        '[log_config.root]\nlevel = "WARNING"\nhandlers = ["console"]\n'
    )
    return path


def fedora_publish(config: Path, specs: list[dict[str, object]], timeout: float = 120.0) -> None:
    """Publish ``{"schema", "topic", "body"[, "id"]}`` messages with ``fedora_messaging.api.publish``."""
    import json

    lines = "".join(json.dumps(spec) + "\n" for spec in specs)
    done = subprocess.run(
        [sys.executable, "-c", PUBLISH_SCRIPT, str(config)],
        input=lines,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0 and "published" in done.stdout, done.stderr[-3000:]
