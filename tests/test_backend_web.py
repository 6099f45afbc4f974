"""The web backend through the daemon: Atom feeds, SSE, tokens, hostile content, metrics."""

from __future__ import annotations

import time
from pathlib import Path

import feedparser
import pytest
from fedmsg_notify.backends.web import safe_link
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError
from prometheus_client.parser import text_string_to_metric_families

from tests.webserver import BODHI, SSEReader, WebDaemon, bodhi_comment, start_web_daemon, web_daemons

__all__ = ["web_daemons"]

RULES = """
rules:
  - name: bodhi comments to the web
    match: {service: bodhi}
    deliver:
      - {via: web, to: bodhi}
      - {via: private, to: secret}
"""


def accounts(tmp: Path, keep: int = 100) -> str:
    token = tmp / "reader.token"
    token.write_text("# readers of the secret feed\ns3cret-token-value\n")
    return (
        f"web: {{backend: web, keep: {keep}, cors_origins: ['https://apps.example.org']}}\n"
        f"private: {{backend: web, token_file: {token}}}"
    )


def start(tmp: Path, web_daemons: list[WebDaemon], keep: int = 100, templates: Path | None = None) -> WebDaemon:
    daemon = start_web_daemon(tmp, RULES, accounts(tmp, keep), templates=templates)
    web_daemons.append(daemon)
    return daemon


def test_the_atom_feed_parses_with_every_field_and_etag_gives_304(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    daemon = start(tmp_path, web_daemons)
    # The feed exists, empty, before its first item: a reader can subscribe at once.
    empty = feedparser.parse(daemon.get("/feeds/bodhi.atom").content)
    assert empty.bozo == 0 and empty.entries == []
    first = daemon.publish(bodhi_comment("alice", "FEDORA-2026-0001"))
    second = daemon.publish(bodhi_comment("bob", "FEDORA-2026-0002", karma=-1))
    daemon.wait_for_items("bodhi", 2)

    response = daemon.get("/feeds/bodhi.atom")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/atom+xml")
    parsed = feedparser.parse(response.content)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.title == "fedmsg-notify: bodhi"
    assert parsed.feed.id == f"{daemon.base}/feeds/bodhi.atom"
    assert {link.rel: link.href for link in parsed.feed.links} == {
        "self": f"{daemon.base}/feeds/bodhi.atom",
        "alternate": f"{daemon.base}/feeds/bodhi",
    }
    # Newest first; every field the issue names.
    newest, oldest = parsed.entries
    for entry, envelope, agent, alias in (
        (newest, second, "bob", "FEDORA-2026-0002"),
        (oldest, first, "alice", "FEDORA-2026-0001"),
    ):
        assert entry.id == f"urn:fedmsg:{envelope['msg_id']}"
        assert entry.title == f"{agent} commented on bodhi update {alias}" + (
            " (karma: -1)" if agent == "bob" else " (karma: 1)"
        )
        assert entry.link == f"https://bodhi.fedoraproject.org/updates/{alias}"
        assert entry.author == agent
        assert [tag.term for tag in entry.tags] == ["bodhi"]
        assert entry.summary.startswith("bodhi: ")
        assert entry.content[0].type == "text/html"
        assert f'<a href="https://bodhi.fedoraproject.org/updates/{alias}">' in entry.content[0].value
        assert time.mktime(entry.updated_parsed) - time.timezone == int(envelope["timestamp"])
    assert parsed.feed.updated_parsed == newest.updated_parsed

    etag = response.headers["ETag"]
    last_modified = response.headers["Last-Modified"]
    assert daemon.get("/feeds/bodhi.atom", headers={"If-None-Match": etag}).status_code == 304
    assert daemon.get("/feeds/bodhi.atom", headers={"If-Modified-Since": last_modified}).status_code == 304
    assert daemon.get("/feeds/bodhi.atom", headers={"If-None-Match": '"other"'}).status_code == 200
    # A new item changes the ETag: the cheap poll now returns the new document.
    daemon.publish(bodhi_comment("carol", "FEDORA-2026-0003"))
    daemon.wait_for_items("bodhi", 3)
    fresh = daemon.get("/feeds/bodhi.atom", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["ETag"] != etag


def test_a_feed_keeps_only_its_last_items(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    daemon = start(tmp_path, web_daemons, keep=3)
    sent = [daemon.publish(bodhi_comment(f"user{n}", f"FEDORA-2026-{n:04}")) for n in range(5)]
    # The private feed gets the same five: once it has them, so has the public one.
    daemon.wait_for_items("secret", 5, params={"token": "s3cret-token-value"})
    entries = feedparser.parse(daemon.get("/feeds/bodhi.atom").content).entries
    assert [e.id for e in entries] == [f"urn:fedmsg:{e['msg_id']}" for e in reversed(sent[2:])]


def test_sse_delivers_live_and_last_event_id_replays_exactly_the_missed(
    tmp_path: Path, web_daemons: list[WebDaemon]
) -> None:
    daemon = start(tmp_path, web_daemons)
    url = f"{daemon.base}/feeds/bodhi/events"
    reader = SSEReader(url)
    try:
        reader.wait_open()
        one = daemon.publish(bodhi_comment("alice", "FEDORA-2026-0001"))
        event_id, event, data = reader.next_event()
        assert event == "item" and data["msg_id"] == one["msg_id"]
        assert data["title"] == "alice commented on bodhi update FEDORA-2026-0001 (karma: 1)"
        assert data["category"] == "bodhi" and data["author"] == "alice"
    finally:
        reader.close()

    missed = [daemon.publish(bodhi_comment(who, f"FEDORA-2026-{n:04}")) for n, who in ((2, "bob"), (3, "carol"))]
    daemon.wait_for_items("bodhi", 3)
    again = SSEReader(url, headers={"Last-Event-ID": event_id})
    try:
        replayed = [again.next_event() for _ in missed]
        assert [data["msg_id"] for _, _, data in replayed] == [m["msg_id"] for m in missed]
        assert [int(i) for i, _, _ in replayed] == [int(event_id) + 1, int(event_id) + 2]
        # Nothing else was replayed: the next event is the one published now.
        four = daemon.publish(bodhi_comment("dave", "FEDORA-2026-0004"))
        assert again.next_event()[2]["msg_id"] == four["msg_id"]
    finally:
        again.close()


def test_a_token_protected_feed_refuses_without_and_with_a_wrong_token(
    tmp_path: Path, web_daemons: list[WebDaemon]
) -> None:
    daemon = start(tmp_path, web_daemons)
    daemon.publish(bodhi_comment("alice", "FEDORA-2026-0001"))
    daemon.wait_for_items("secret", 1, params={"token": "s3cret-token-value"})
    for path in ("/feeds/secret.atom", "/feeds/secret", "/feeds/secret/events"):
        missing = daemon.get(path)
        assert missing.status_code == 401, path
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert daemon.get(path, params={"token": "s3cret-token-valuX"}).status_code == 401, path
        assert daemon.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    ok = daemon.get("/feeds/secret.atom", headers={"Authorization": "Bearer s3cret-token-value"})
    assert ok.status_code == 200 and len(feedparser.parse(ok.content).entries) == 1
    # The token never reaches the daemon's log, though it was in request URLs.
    assert "s3cret-token-value" not in daemon.log.read_text()
    assert daemon.get("/feeds/nosuch.atom").status_code == 404


def test_cors_only_for_configured_origins(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    daemon = start(tmp_path, web_daemons)
    allowed = daemon.get("/feeds/bodhi.atom", headers={"Origin": "https://apps.example.org"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://apps.example.org"
    other = daemon.get("/feeds/bodhi.atom", headers={"Origin": "https://evil.example.com"})
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers


HOSTILE_TEMPLATE = """{% extends "@shipped/web/default.j2" %}
{% block title %}{{ message.msg.title }}{% endblock %}
{% block link %}{{ message.msg.link }}{% endblock %}
"""


def test_hostile_content_is_text_on_the_page_and_in_the_feed(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    templates = tmp_path / "templates"
    (templates / "web").mkdir(parents=True)
    (templates / "web" / "default.j2").write_text(HOSTILE_TEMPLATE)
    daemon = start(tmp_path, web_daemons, templates=templates)
    hostile = {**bodhi_comment("<script>alert('agent')</script>", "<img src=x onerror=alert(1)>")}
    hostile["title"] = "<script>alert('title')</script>"
    hostile["link"] = "javascript:alert(document.cookie)"
    daemon.publish(hostile, topic=BODHI)
    daemon.wait_for_items("bodhi", 1)

    page = daemon.get("/feeds/bodhi")
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    html = page.text
    assert "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in html
    assert "<script>alert" not in html and "javascript:" not in html and "<img" not in html

    raw = daemon.get("/feeds/bodhi.atom").text
    assert "<script>" not in raw and "javascript:" not in raw
    entry = feedparser.parse(raw).entries[0]
    # Text fields are the text itself; no link was made from the javascript: URL.
    assert entry.title == "<script>alert('title')</script>"
    assert entry.title_detail.type == "text/plain"
    assert "link" not in entry or not entry.link.startswith("javascript")
    # A "username" that is markup is no username: meta names no agent, so no author.
    assert "author" not in entry
    # The HTML content carries the hostile strings escaped, as text.
    assert "&lt;img src=x onerror=alert(1)&gt;" in entry.content[0].value


def test_metrics_parse_and_count_messages_and_deliveries(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    daemon = start(tmp_path, web_daemons)
    daemon.publish(bodhi_comment("alice", "FEDORA-2026-0001"))
    daemon.wait_for_items("bodhi", 1)
    assert daemon.get("/healthz").text == "ok\n"
    deadline = time.monotonic() + 15
    while True:
        families = {f.name: f for f in text_string_to_metric_families(daemon.get("/metrics").text)}
        sent = {
            (s.labels["destination"], s.labels["outcome"]): s.value
            for s in families["fedmsg_notify_deliveries"].samples
            if s.name == "fedmsg_notify_deliveries_total"
        }
        if sent.get(("web:bodhi", "sent")) == 1 and sent.get(("private:secret", "sent")) == 1:
            break
        assert time.monotonic() < deadline, sent
        time.sleep(0.1)
    received = families["fedmsg_notify_messages_received"].samples
    assert [(s.labels["bus"], s.value) for s in received if s.name.endswith("_total")] == [("zeromq", 1.0)]
    depth = {s.labels["destination"]: s.value for s in families["fedmsg_notify_queue_depth"].samples}
    assert depth == {"web:bodhi": 0.0, "private:secret": 0.0}
    assert "fedmsg_notify_messages_refused" in families
    assert "fedmsg_notify_retrying" in families
    assert families["fedmsg_notify_web_live_clients"].samples[0].value == 0
    # No intake_processes here: the one slice was routed on the daemon's loop.
    slices = {s.labels["where"]: s.value for s in families["fedmsg_notify_intake_slices"].samples
              if s.name.endswith("_total")}
    assert slices == {"loop": 1.0, "process": 0.0}
    assert families["fedmsg_notify_intake_processes_ready"].samples[0].value == 0


def test_feeds_and_event_ids_survive_a_restart(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    daemon = start(tmp_path, web_daemons)
    first = daemon.publish(bodhi_comment("alice", "FEDORA-2026-0001"))
    second = daemon.publish(bodhi_comment("bob", "FEDORA-2026-0002"))
    daemon.wait_for_items("bodhi", 2)
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log.read_text()

    again = start(tmp_path, web_daemons)
    entries = feedparser.parse(again.get("/feeds/bodhi.atom").content).entries
    assert [e.id for e in entries] == [f"urn:fedmsg:{m['msg_id']}" for m in (second, first)]
    reader = SSEReader(f"{again.base}/feeds/bodhi/events", headers={"Last-Event-ID": "1"})
    try:
        event_id, _, data = reader.next_event()
        assert (event_id, data["msg_id"]) == ("2", second["msg_id"])
        third = again.publish(bodhi_comment("carol", "FEDORA-2026-0003"))
        event_id, _, data = reader.next_event()
        assert (event_id, data["msg_id"]) == ("3", third["msg_id"])
    finally:
        reader.close()


def test_live_clients_are_capped(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    daemon = start_web_daemon(tmp_path, RULES, accounts(tmp_path), web="max_clients: 1")
    web_daemons.append(daemon)
    first = SSEReader(f"{daemon.base}/feeds/bodhi/events")
    try:
        first.wait_open()
        refused = daemon.get("/feeds/bodhi/events")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    finally:
        first.close()
    # The slot is free again once the first client has gone.
    deadline = time.monotonic() + 10
    while True:
        second = SSEReader(f"{daemon.base}/feeds/bodhi/events")
        try:
            if second.response.status_code == 200:
                second.wait_open()
                break
        finally:
            second.close()
        assert time.monotonic() < deadline, "the slot never came back"
        time.sleep(0.05)


def config_problems(tmp: Path, text: str) -> list[str]:
    path = tmp / "config.yaml"
    path.write_text(text)
    with pytest.raises(ProblemsError) as caught:
        load_config(path)
    return [str(p).replace(str(path), "config.yaml") for p in caught.value.problems]


def test_bad_web_settings_name_file_line_column(tmp_path: Path) -> None:
    problems = config_problems(
        tmp_path,
        "accounts:\n  feeds: {backend: web, keep: 0, colour: red}\n"
        "  other: {backend: web, token_file: relative.token, cors_origins: ['https://x.org/path']}\n"
        "web:\n  listen: localhost\n  max_clients: 0\n",
    )
    assert any(p.startswith("config.yaml:2:") and "keep" in p for p in problems), problems
    assert any(p.startswith("config.yaml:2:") and "colour" in p for p in problems), problems
    assert any(p.startswith("config.yaml:3:") and "absolute path" in p for p in problems), problems
    assert any(p.startswith("config.yaml:3:") and "CORS origin" in p for p in problems), problems
    assert any(p.startswith("config.yaml:5:") and "HOST:PORT" in p for p in problems), problems
    assert any(p.startswith("config.yaml:6:") and "max_clients" in p for p in problems), problems


def test_a_good_web_section_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "accounts: {feeds: {backend: web}}\nweb: {listen: '127.0.0.1:8080', base_url: 'https://n.example.org'}\n"
    )
    config = load_config(path)
    assert config.web is not None and config.web.listen == "127.0.0.1:8080"
    assert config.web.base_url == "https://n.example.org"
    assert config.accounts["feeds"].backend.__name__ == "WebBackend"


@pytest.mark.parametrize(
    ("link", "kept"),
    [
        ("https://bodhi.fedoraproject.org/updates/FEDORA-2026-1", True),
        ("  http://example.org/x  ", True),
        ("javascript:alert(1)", False),
        ("JaVaScRiPt:alert(1)", False),
        ("data:text/html,<script>alert(1)</script>", False),
        ("https://example.org/\nSet-Cookie: x", False),
        ("//example.org/x", False),
        ("", False),
    ],
)
def test_only_plain_http_links_become_links(link: str, kept: bool) -> None:
    assert (safe_link(link) is not None) is kept


def test_an_idle_stream_carries_heartbeats(tmp_path: Path, web_daemons: list[WebDaemon]) -> None:
    daemon = start(tmp_path, web_daemons)
    reader = SSEReader(f"{daemon.base}/feeds/bodhi/events", timeout=5.0)
    try:
        assert reader.response.headers["Content-Type"] == "text/event-stream"
        reader.wait_open()
        # heartbeat: 1 in the test config; each read is bounded by the reader's timeout.
        assert next(line for line in reader.lines if line) == ": ping"
    finally:
        reader.close()
