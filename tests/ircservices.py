"""A real IRC network with services: Debian's inspircd linked to atheme-services.

inspircd (3.x) loads ``m_sasl``, ``m_services_account`` and ``m_blockcolor`` (channel
mode ``+c``); atheme (7.2) links to it with its inspircd protocol module and runs
NickServ and SaslServ (PLAIN). This is what ``tests/ircserver.py``'s ``ScriptedServer``
used to stand in for: SASL success and failure, NickServ IDENTIFY and ``+c`` are tested
against it. Both run in the foreground as the test's own processes with every file in a
temporary directory; the recipe is the one in the shared servers notes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ircserver import _wait_port, free_port

INSPIRCD = shutil.which("inspircd") or "/usr/sbin/inspircd"
ATHEME = shutil.which("atheme-services") or "/usr/bin/atheme-services"
ATHEME_EXAMPLE = Path("/usr/share/doc/atheme-services/examples/atheme.conf.example")
LINK_PASSWORD = "linkpass"

INSPIRCD_CONF = """\
<config format="xml">
<server name="irc.test" description="test" network="testnet">
<admin name="a" nick="a" email="a@example.org">
<bind address="127.0.0.1" port="@CLIENT_PORT@" type="clients">
<bind address="127.0.0.1" port="@LINK_PORT@" type="servers">
<connect allow="*" timeout="60" pingfreq="120" hardsendq="1M" softsendq="8192" recvq="8K" threshold="10" \
commandrate="1000" fakelag="off" localmax="100" globalmax="100" useident="no" limit="5000" modes="+x">
<class name="Shutdown" commands="DIE RESTART REHASH">
<pid file="@DIR@/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="@DIR@/inspircd.log">
<options prefixquit="Quit: " allowzerolimit="no">
<security hidesplits="no" hideulines="no" announceinvites="dynamic">
<performance netbuffersize="10240" somaxconn="128" softlimit="1024" clonesonconnect="true" timeskipwarn="2s" \
quietbursts="yes">
<dns timeout="1">
<module name="spanningtree">
<module name="services_account">
<module name="sasl">
<module name="blockcolor">
<module name="cap">
<link name="services.test" ipaddr="127.0.0.1" port="@LINK_PORT@" allowmask="127.0.0.1/32" \
sendpass="@PASS@" recvpass="@PASS@">
<uline server="services.test" silent="yes">
<sasl target="services.test">
"""


def atheme_config(link_port: int) -> str:
    """Debian's example atheme.conf with the inspircd protocol and our uplink, nothing else changed."""
    text = ATHEME_EXAMPLE.read_text(encoding="utf-8")
    for before, after in (
        ('#loadmodule "modules/protocol/charybdis";', 'loadmodule "modules/protocol/inspircd";'),
        ('name = "services.int";', 'name = "services.test";'),
        ('netname = "misconfigured network";', 'netname = "testnet";'),
        ('hidehostsuffix = "users.misconfigured";', 'hidehostsuffix = "users.testnet";'),
        ('adminname = "misconfigured admin";', 'adminname = "Test Admin";'),
        ('adminemail = "misconfigured@admin.tld";', 'adminemail = "admin@example.org";'),
    ):
        assert before in text, f"the atheme example config has changed: no {before!r}"
        text = text.replace(before, after, 1)
    uplink = (
        f'uplink "irc.test" {{\n\thost = "127.0.0.1";\n\tsend_password = "{LINK_PASSWORD}";\n'
        f'\treceive_password = "{LINK_PASSWORD}";\n\tport = {link_port};\n}};\n'
    )
    text, count = re.subn(r'uplink "irc\.example\.net" \{.*?\n\};\n', lambda _: uplink, text, flags=re.S)
    assert count == 1, "the atheme example config has changed: no uplink block to replace"
    text, count = re.subn(r'uplink "irc6\.example\.net" \{.*?\n\};\n', "", text, flags=re.S)
    assert count == 1, "the atheme example config has changed: no IPv6 uplink block to drop"
    return text


@dataclass
class IrcServices:
    """inspircd on a client port plus atheme linked on a server port; ``port`` is what clients use."""

    workdir: Path
    port: int = field(default_factory=free_port)
    link_port: int = field(default_factory=free_port)
    ircd: subprocess.Popen[bytes] | None = None
    services: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        conf = self.workdir / "inspircd.conf"
        conf.write_text(
            INSPIRCD_CONF.replace("@DIR@", str(self.workdir))
            .replace("@CLIENT_PORT@", str(self.port))
            .replace("@LINK_PORT@", str(self.link_port))
            .replace("@PASS@", LINK_PASSWORD),
            encoding="utf-8",
        )
        self.ircd = subprocess.Popen(
            [INSPIRCD, "--nofork", f"--config={conf}", "--runasroot"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, timeout)
        _wait_port(self.link_port, timeout)
        (self.workdir / "atheme.conf").write_text(atheme_config(self.link_port), encoding="utf-8")
        log = self.workdir / "atheme.log"
        self.services = subprocess.Popen(
            [ATHEME, "-n", "-c", str(self.workdir / "atheme.conf"), "-D", str(self.workdir / "data"),
             "-l", str(log), "-p", str(self.workdir / "atheme.pid")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while "finished synching with uplink" not in (log.read_text(errors="replace") if log.exists() else ""):
            if self.services.poll() is not None or self.ircd.poll() is not None:
                raise RuntimeError(f"IRC services did not start; atheme log:\n{self.log_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"atheme did not link to inspircd in {timeout} s; log:\n{self.log_tail(log)}")
            time.sleep(0.05)

    @staticmethod
    def log_tail(path: Path) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else "(no log)"

    def stop(self) -> None:
        for process in (self.services, self.ircd):
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.services = self.ircd = None
