"""The Mastodon backend against a real HTTP server speaking the Mastodon API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import re
import textwrap
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.backend import Destination, Item, PermanentFailure, TemporaryFailure
from fedmsg_notify.backends import backend_class
from fedmsg_notify.backends.mastodon import (
    MastodonAccount,
    MastodonBackend,
    fit_status,
    idempotency_key,
    reset_seconds,
    retry_after_seconds,
    status_length,
)
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import free_port
from tests.mastodonserver import MastodonServer, Scripted, mastodon_length

TOKEN = "s3cr3t-t0ken-value"
LINK = "https://bodhi.fedoraproject.org/updates/FEDORA-2026-0123456789abcdef0123456789abcdef"


class FakeClock:
    """Monotonic and wall time that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[MastodonServer]:
    with MastodonServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "mastodon.token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    return path


def account(server_url: str, token_file: Path, **extra: Any) -> MastodonAccount:
    return MastodonAccount.model_validate(
        {"backend": "mastodon", "instance": server_url, "token_file": str(token_file), **extra}
    )


@pytest.fixture
async def make_backend(server: MastodonServer, token_file: Path) -> AsyncIterator[Any]:
    started: list[MastodonBackend] = []

    async def make(**extra: Any) -> MastodonBackend:
        backend = MastodonBackend("firehose", account(server.url, token_file, **extra))
        await backend.start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()


def item(status: str, *, msg_id: str = "2026-abc", service: str = "bodhi", **extra: Any) -> Item:
    fields: dict[str, Any] = {
        "id": 1,
        "msg_id": msg_id,
        "destination": Destination("firehose"),
        "rule": "firehose",
        "topic": f"org.fedoraproject.prod.{service}.update.request.stable",
        "service": service,
        "rendered": {"status": status},
    }
    fields.update(extra)
    return Item(**fields)


# --- posting ------------------------------------------------------------------------


async def test_posts_status_text_visibility_and_idempotency_key(server: MastodonServer, make_backend: Any) -> None:
    """A matched message appears on the account as the rendered text, with the configured visibility."""
    backend = await make_backend(visibility="unlisted")
    await backend.send(item(f"bodhi: ralph submitted fedmsg-1.0 to stable {LINK}"))

    assert [s["content"] for s in server.statuses] == [f"bodhi: ralph submitted fedmsg-1.0 to stable {LINK}"]
    assert server.statuses[0]["visibility"] == "unlisted"
    post = server.posts[0]
    assert post.headers["idempotency-key"] == idempotency_key("2026-abc", "firehose")
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.form["content_type"] == "text/plain"


async def test_destination_options_override_visibility_and_add_content_warning(
    server: MastodonServer, make_backend: Any
) -> None:
    """A rule's `visibility` and `spoiler_text` reach the post; the account default applies otherwise."""
    backend = await make_backend(visibility="public")
    await backend.send(item("koji build failed", options={"visibility": "private", "spoiler_text": "build noise"}))
    await backend.send(item("second", msg_id="2026-def"))

    assert [(s["visibility"], s["spoiler_text"]) for s in server.statuses] == [
        ("private", "build noise"),
        ("public", ""),
    ]


async def test_hashtags_per_service_are_appended(server: MastodonServer, make_backend: Any) -> None:
    """Configured hashtags for a service (and "*" for all) end the post; other services don't get them."""
    backend = await make_backend(hashtags={"bodhi": ["bodhi", "#fedora"], "*": ["fedmsg"]})
    await backend.send(item("an update"))
    await backend.send(item("a build", msg_id="2026-koji", service="buildsys"))

    assert [s["content"] for s in server.statuses] == ["an update\n\n#fedmsg #bodhi #fedora", "a build\n\n#fedmsg"]


async def test_bus_content_is_posted_as_inert_text(server: MastodonServer, make_backend: Any) -> None:
    """Controls are stripped, markup stays literal and a named @user@host is not notified."""
    backend = await make_backend()
    await backend.send(item("<b>hi</b>\x1b[31m cc @admin@mastodon.social and @root\x00 please"))

    content = server.statuses[0]["content"]
    assert content == "<b>hi</b>[31m cc @\u2060admin@mastodon.social and @\u2060root please"
    assert "\x1b" not in content and "\x00" not in content


# --- length -------------------------------------------------------------------------


async def test_long_text_is_truncated_at_the_instance_limit_with_the_link_intact(token_file: Path) -> None:
    """On an instance allowing 100 characters a long post is cut at a word with "…" and keeps its link."""
    words = "ralph submitted python-fedmsg-notify-1.0-1.fc44 and twelve other packages to stable " * 4
    with MastodonServer(token=TOKEN, max_characters=100) as server:
        backend = MastodonBackend("firehose", account(server.url, token_file))
        await backend.start()
        try:
            await backend.send(item(f"bodhi: {words.strip()} {LINK}"))
        finally:
            await backend.close()
        assert backend.limits.max_characters == 100

    (status,) = server.statuses
    text = status["content"]
    assert text.endswith(f"… {LINK}")
    assert mastodon_length(text) <= 100
    body = text[: -len(f"… {LINK}")]
    assert f"bodhi: {words}".startswith(body)
    assert body.endswith(("stable", "ralph", "submitted", "python-fedmsg-notify-1.0-1.fc44", "and", "twelve",
                          "other", "packages", "to"))
    # Nearly all the room is used: the cut is at the last word that fits.
    assert mastodon_length(text) > 100 - len(" python-fedmsg-notify-1.0-1.fc44") - 1


async def test_limit_falls_back_to_v1_instance_and_to_500(token_file: Path) -> None:
    """Older servers (no /api/v2/instance) still give their limit; a failing one means Mastodon's 500 for now."""
    for options, expected in (({"v2_instance": False}, 321), ({"instance_status": 503}, 500)):
        with MastodonServer(token=TOKEN, max_characters=321, **options) as server:
            backend = MastodonBackend("firehose", account(server.url, token_file))
            await backend.start()
            try:
                await backend.send(item("first"))
                await backend.send(item("second", msg_id="2026-second"))
            finally:
                await backend.close()
        assert backend.limits.max_characters == expected
        # Read once, not before every post; asked again while the server has trouble answering.
        assert sum(r.path.endswith("/instance") for r in server.requests) == 2


def test_links_count_as_23_and_content_warning_counts_too() -> None:
    """A long link costs 23 characters, as on Mastodon; the content warning takes its share of the limit."""
    assert status_length(f"see {LINK}") == 4 + 23
    assert status_length(f"see {LINK}.") == 4 + 23 + 1
    # Hosts without a top-level domain are not links to Mastodon: every character counts.
    assert status_length("see http://localhost:8080/some/long/path/here") == 4 + 41
    assert status_length("https://x.org") == 23
    text = "word " * 30 + LINK
    fitted = fit_status(text, 60, reserved=20)
    assert fitted.endswith(f"… {LINK}") and status_length(fitted) + 20 <= 60


def test_truncation_keeps_link_and_hashtags_and_drops_tags_first() -> None:
    """Hashtags after the link survive truncation; when room is short the link wins over the tags."""
    text = "word " * 50 + f"{LINK}\n\n#fedora #bodhi"
    assert fit_status(text, 100).endswith(f"word… {LINK}\n\n#fedora #bodhi")
    assert fit_status(text, 30) == f"word… {LINK}"
    assert fit_status(f"{LINK} {LINK}", 30) == f"… {LINK}"


def test_truncation_never_splits_a_link_in_the_middle_of_the_text() -> None:
    """A link that does not fit whole is dropped from the cut text rather than posted half."""
    text = f"first {LINK} then much more text " + "x" * 100
    assert fit_status(text, 25) == "first…"
    # With room for it the link stays whole (23) and the cut falls on a later word.
    assert fit_status(text, 40) == f"first {LINK} then much…"
    assert fit_status("short", 40) == "short"


# Arbitrary characters mixed with the pieces the formatter treats specially.
ANY_TEXT = st.lists(
    st.one_of(st.text(max_size=30), st.sampled_from([" ", "\n", "@ralph@x.org", "#tag", "…", LINK, "http://localhost/x"])),
    max_size=25,
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT, limit=st.integers(min_value=30, max_value=600), spoiler=st.text(max_size=20))
def test_any_content_becomes_a_post_within_the_limit(text: str, limit: int, spoiler: str) -> None:
    """Whatever a message holds, the post fits the instance, has no controls and notifies nobody."""
    # Building a payload needs no token: the backend is never started here.
    backend = MastodonBackend("firehose", account("https://example.social", Path("/unused.token")))
    backend.limits = type(backend.limits)(max_characters=limit)
    try:
        payload = backend.build_payload(item(f"{text} {LINK}", options={"spoiler_text": spoiler}))
    except PermanentFailure:
        return  # nothing printable was left: recorded as a failure, not posted
    status = payload["status"]
    assert mastodon_length(status, payload.get("spoiler_text", "")) <= limit
    assert status_length(status) + len(payload.get("spoiler_text", "")) <= limit
    assert not any(ch in status for ch in "\x00\r\x1b\x7f")
    assert re.search(r"(?<![=/\w])@[a-z0-9_]", status, re.IGNORECASE) is None  # Mastodon's mention rule
    if len(payload.get("spoiler_text", "")) + 25 <= limit:
        assert status.endswith(LINK)


def test_truncation_keeps_combining_characters_with_their_letter() -> None:
    """A hard cut never leaves a letter without its accent or a broken emoji sequence."""
    text = "e\u0301" * 50
    fitted = fit_status(text, 20)
    assert status_length(fitted) <= 20
    assert fitted.endswith("…") and fitted[-2] == "\u0301"


# --- rate limits --------------------------------------------------------------------


async def test_429_with_reset_headers_delays_then_posts_once(server: MastodonServer, make_backend: Any) -> None:
    """A rate-limited post waits for the window to reset, without hammering the server, then posts once."""
    clock = FakeClock()
    backend = await make_backend()
    backend.clock = backend.wall_clock = clock
    reset = datetime.fromtimestamp(clock.now + 120, UTC).isoformat().replace("+00:00", "Z")
    server.script.append(
        Scripted(
            status=429,
            error="Too many requests",
            headers={"Retry-After": "90", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
        )
    )

    with pytest.raises(TemporaryFailure) as first:
        await backend.send(item("flood"))
    assert first.value.retry_after == pytest.approx(120)  # the later of Retry-After and the reset
    assert "Too many requests" in first.value.reason

    clock.now += 60
    with pytest.raises(TemporaryFailure) as second:
        await backend.send(item("flood"))
    assert second.value.retry_after == pytest.approx(60)
    assert len(server.posts) == 1  # waited without asking the server again

    clock.now += 60
    await backend.send(item("flood"))
    assert [s["content"] for s in server.statuses] == ["flood"]
    assert len(server.posts) == 2


async def test_last_request_of_the_window_pauses_until_reset(server: MastodonServer, make_backend: Any) -> None:
    """When X-RateLimit-Remaining reaches 0 the next post waits for X-RateLimit-Reset instead of earning a 429."""
    clock = FakeClock()
    backend = await make_backend()
    backend.clock = backend.wall_clock = clock
    server.success_headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(clock.now) + 300)}

    await backend.send(item("last one in this window"))
    with pytest.raises(TemporaryFailure) as waiting:
        await backend.send(item("next", msg_id="2026-next"))
    assert waiting.value.retry_after == pytest.approx(300)
    assert len(server.posts) == 1


def test_retry_after_and_reset_header_formats() -> None:
    """Retry-After as seconds or HTTP date, and X-RateLimit-Reset as ISO 8601 or epoch, all give the wait."""
    now = 1_800_000_000.0
    http_date = format_datetime(datetime.fromtimestamp(now + 42, UTC), usegmt=True)
    assert retry_after_seconds("17", now) == 17
    assert retry_after_seconds(http_date, now) == pytest.approx(42)
    assert retry_after_seconds("soon", now) is None
    assert reset_seconds("2027-01-15T08:00:30.123456Z", datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()) == (
        pytest.approx(30.123456)
    )
    assert reset_seconds(str(now + 5), now) == pytest.approx(5)


def test_default_pace_stays_under_300_posts_per_3_hours() -> None:
    """Even a full burst followed by the steady rate never exceeds Mastodon's 300 posts in 3 hours."""
    assert MastodonBackend.burst + MastodonBackend.rate * 3 * 3600 <= 300
    assert MastodonBackend.rate * 300 <= 300  # and far under 300 requests per 5 minutes


# --- never twice --------------------------------------------------------------------


async def test_timeout_after_the_server_stored_the_post_does_not_duplicate_it(
    server: MastodonServer, make_backend: Any
) -> None:
    """A post whose answer never arrived is retried with the same key and appears exactly once."""
    backend = await make_backend(timeout=0.3)
    server.script.append(Scripted(delay_after_store=3.0))

    with pytest.raises(TemporaryFailure) as timed_out:
        await backend.send(item("koji build done"))
    assert "Timeout" in timed_out.value.reason
    assert len(server.statuses) == 1  # the server did post it

    await backend.send(item("koji build done"))
    assert len(server.statuses) == 1
    keys = {post.headers["idempotency-key"] for post in server.posts}
    assert len(server.posts) == 2 and len(keys) == 1


def test_idempotency_key_is_stable_and_distinct() -> None:
    """The key is the same across restarts for a (message, destination) and differs otherwise."""
    assert idempotency_key("m1", "firehose") == idempotency_key("m1", "firehose")
    assert idempotency_key("m1", "firehose") != idempotency_key("m2", "firehose")
    assert idempotency_key("m1", "firehose") != idempotency_key("m1", "other")
    assert idempotency_key("coalesced:5", "firehose", "12 posts") != idempotency_key("coalesced:5", "firehose", "3")


# --- errors -------------------------------------------------------------------------


async def test_422_is_permanent_with_the_servers_error_text(server: MastodonServer, make_backend: Any) -> None:
    """A rejected post is not retried and says why, in the server's words."""
    backend = await make_backend()
    server.script.append(Scripted(status=422, error="Validation failed: Text character limit of 500 exceeded"))
    with pytest.raises(PermanentFailure) as rejected:
        await backend.send(item("x"))
    assert "422" in rejected.value.reason
    assert "Validation failed: Text character limit of 500 exceeded" in rejected.value.reason


async def test_bad_token_is_permanent_and_never_logged(
    server: MastodonServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A revoked token gives a permanent 401 failure; neither the token nor the failure text leaks it."""
    caplog.set_level(logging.DEBUG)
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-xyz", encoding="utf-8")
    backend = MastodonBackend("firehose", account(server.url, wrong))
    await backend.start()
    try:
        with pytest.raises(PermanentFailure) as rejected:
            await backend.send(item("hello"))
    finally:
        await backend.close()
    assert "401" in rejected.value.reason and "The access token is invalid" in rejected.value.reason
    assert "not-the-token-xyz" not in caplog.text and "not-the-token-xyz" not in rejected.value.reason
    assert "not-the-token-xyz" not in repr(backend.settings) and "not-the-token-xyz" not in repr(backend._token)


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_server_errors_are_temporary(server: MastodonServer, make_backend: Any, status: int) -> None:
    """A failing or overloaded instance is retried later, not given up on."""
    backend = await make_backend()
    server.script.append(Scripted(status=status, error="Service temporarily unavailable"))
    with pytest.raises(TemporaryFailure):
        await backend.send(item("x"))
    await backend.send(item("x"))
    assert len(server.statuses) == 1


@pytest.mark.parametrize("status", [403, 404, 400])
async def test_other_client_errors_are_permanent(server: MastodonServer, make_backend: Any, status: int) -> None:
    """A suspended account or a wrong address is recorded, not retried forever."""
    backend = await make_backend()
    server.script.append(Scripted(status=status, error="This action is not allowed"))
    with pytest.raises(PermanentFailure, match="This action is not allowed"):
        await backend.send(item("x"))


async def test_unreachable_instance_is_temporary(token_file: Path) -> None:
    """An instance that is down makes a temporary failure (and the daemon still starts)."""
    backend = MastodonBackend("firehose", account(f"http://127.0.0.1:{free_port()}", token_file, timeout=2))
    await backend.start()
    try:
        with pytest.raises(TemporaryFailure, match="ConnectError"):
            await backend.send(item("x"))
    finally:
        await backend.close()
    assert backend.limits.max_characters == 500


async def test_unreadable_token_file_fails_start_clearly_until_fixed(server: MastodonServer, tmp_path: Path) -> None:
    """A missing token file is reported with the account and the path, and posting works once it is there."""
    missing = tmp_path / "nope.token"
    backend = MastodonBackend("firehose", account(server.url, missing))
    with pytest.raises(TemporaryFailure, match=r"account 'firehose': cannot read token_file .*nope\.token"):
        await backend.start()
    missing.write_text(TOKEN, encoding="utf-8")
    await backend.start()
    try:
        await backend.send(item("back"))
    finally:
        await backend.close()
    assert len(server.statuses) == 1


# --- flood coalescing ---------------------------------------------------------------


async def test_summary_of_a_backlog_fits_one_post(server: MastodonServer, make_backend: Any) -> None:
    """A flood becomes one readable post naming the count and as many messages as fit."""
    backend = await make_backend()
    items = [
        item(
            f"bodhi: update {n} {LINK}",
            msg_id=f"m{n}",
            meta={"subtitle": f"ralph submitted python-pkg{n:02d}-1.0-1.fc44 to stable"},
        )
        for n in range(40)
    ]
    rendered = backend.summarise(items)
    text = rendered["status"]
    assert text.startswith("40 bodhi update request stable messages:\n• ralph submitted python-pkg00-1.0-1.fc44")
    assert status_length(text) <= 500
    shown = text.count("\n• ")
    assert 5 < shown < 40 and text.endswith(f"\n…and {40 - shown} more")

    await backend.send(item(text, msg_id="coalesced:1", count=40))
    assert server.statuses[0]["content"] == text


def test_summary_counts_merged_summaries_and_mixed_services(token_file: Path) -> None:
    """Summaries of summaries keep the total, and mixed services are counted per service."""
    backend = MastodonBackend("firehose", account("https://example.social", token_file))
    items = [
        item("3 bodhi messages", msg_id="coalesced:1", count=3, meta={"subtitle": "3 bodhi messages"}),
        item("koji build", msg_id="k1", service="buildsys", meta={"subtitle": "ralph built foo"}),
        item("koji build", msg_id="k2", service="buildsys", meta={"subtitle": "ralph built foo"}),
    ]
    text = backend.summarise(items)["status"]
    assert text.splitlines()[0] == "5 messages (bodhi 3, buildsys 2):"
    assert "• ralph built foo (×2)" in text


async def test_digest_renders_as_one_post_within_the_limit(server: MastodonServer, make_backend: Any) -> None:
    """A rule with a digest on the Mastodon account posts one list of messages, cut to the instance's limit."""
    from fedmsg_notify.matching.rules import Route, Rule
    from fedmsg_notify.render.renderer import Renderer

    entries = [
        {"message": {}, "topic": "t", "meta": {"title": "bodhi", "subtitle": f"ralph pushed python-pkg{n:02d}"},
         "rendered": {}}
        for n in range(60)
    ]
    route = Route(destination=Destination("firehose"), rule=Rule(name="digest", file="rules.yaml"))
    rendered = Renderer([]).render_digest(MastodonBackend, entries, route, 75)
    assert rendered["status"].startswith("75 messages:\n• bodhi: ralph pushed python-pkg00\n")

    backend = await make_backend()
    await backend.send(item(rendered["status"], msg_id="digest:1", count=75))
    (status,) = server.statuses
    assert mastodon_length(status["content"]) <= 500 and status["content"].endswith("…")


# --- configuration ------------------------------------------------------------------


def test_registered_as_builtin_backend() -> None:
    """`backend: mastodon` in a config finds this backend."""
    assert backend_class("mastodon") is MastodonBackend


def test_config_errors_name_the_place(tmp_path: Path, token_file: Path) -> None:
    """Plain-http instances, relative token paths, bad hashtags and unknown keys are reported with positions."""
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            accounts:
              fosstodon:
                backend: mastodon
                instance: http://fosstodon.org
                token_file: {token_file}
              other:
                backend: mastodon
                instance: https://example.social
                token_file: relative.token
                hashtags: {{bodhi: ["not a tag"]}}
                visibilty: public
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(ProblemsError) as problems:
        load_config(config)
    text = str(problems.value)
    assert "config.yaml:4:" in text and "must use https" in text
    assert "config.yaml:9:" in text and "token_file must be an absolute path" in text
    assert "hashtag 'not a tag'" in text
    assert "unknown key 'visibilty'" in text and "did you mean 'visibility'" in text


def test_valid_account_loads(tmp_path: Path, token_file: Path) -> None:
    """A correct account validates, with loopback http allowed for tests and a trailing slash dropped."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"accounts:\n  fosstodon: {{backend: mastodon, instance: 'https://fosstodon.org/', token_file: '{token_file}',"
        " visibility: unlisted}\n",
        encoding="utf-8",
    )
    loaded = load_config(config).accounts["fosstodon"]
    assert loaded.backend is MastodonBackend
    assert isinstance(loaded.options, MastodonAccount)
    assert loaded.options.instance == "https://fosstodon.org"
    assert loaded.options.visibility == "unlisted"
    assert account("http://127.0.0.1:9", token_file).instance == "http://127.0.0.1:9"


# --- end to end through the daemon ----------------------------------------------------


def write_config(tmp_path: Path, server: MastodonServer, token_file: Path, endpoint: str, pace: str = "") -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "firehose.yaml").write_text(
        "rules:\n"
        "  - name: firehose\n"
        "    match: {topic: '*.bodhi.*'}\n"
        "    deliver: [{via: firehose, visibility: unlisted}]\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            bus: {{endpoints: ['{endpoint}']}}
            accounts:
              firehose: {{backend: mastodon, instance: '{server.url}', token_file: '{token_file}'{pace}}}
            rules: ['{rules}']
            state: '{tmp_path / "state.db"}'
            """
        ),
        encoding="utf-8",
    )
    return config


async def run_daemon_until(config_path: Path, endpoint: str, count: int, done: Any, **daemon_options: Any) -> None:
    """Run the daemon, publish ``count`` bodhi messages, and stop once ``done()`` holds (or 20 s pass)."""
    from fedmsg_notify.bus.envelope import build_envelope
    from fedmsg_notify.daemon import Daemon
    from fedmsg_notify.testing import publish_all

    daemon = Daemon(load_config(config_path), **daemon_options)
    ready = asyncio.Event()
    running = asyncio.create_task(daemon.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        messages = [
            build_envelope(
                "org.fedoraproject.prod.bodhi.update.comment",
                {"comment": {"text": f"works for me {n}", "user": {"name": "ralph"},
                             "update": {"title": f"python-pkg{n:02d}-1.0-1.fc44"}}},
                i=n + 1,
                username="bodhi",
            )
            for n in range(count)
        ]
        await asyncio.to_thread(publish_all, endpoint, messages)
        for _ in range(400):
            if done():
                break
            await asyncio.sleep(0.05)
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 15)


async def test_rejected_post_is_permanent_and_shown_by_status(
    tmp_path: Path, server: MastodonServer, token_file: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A post the instance rejects (422) is not retried, and `fedmsg-notify status` shows the server's reason."""
    from fedmsg_notify.commands.cli import main

    config = write_config(tmp_path, server, token_file, endpoint)
    server.script.append(Scripted(status=422, error="Validation failed: Text character limit of 500 exceeded"))
    await run_daemon_until(config, endpoint, 2, lambda: len(server.posts) >= 2 and len(server.statuses) >= 1)

    assert len(server.posts) == 2  # the rejected one was not retried
    assert [s["visibility"] for s in server.statuses] == ["unlisted"]
    capsys.readouterr()
    assert main(["status", "-c", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "firehose" in shown and "failed 1" in shown and "sent 1" in shown
    assert "Validation failed: Text character limit of 500 exceeded" in shown
    assert TOKEN not in shown


async def test_flood_under_a_tight_rate_limit_is_coalesced_not_dropped(
    tmp_path: Path, server: MastodonServer, token_file: Path, endpoint: str
) -> None:
    """Thirty messages for an account allowed one post a second become a few posts that account for all thirty."""
    from fedmsg_notify.delivery.coalesce import Coalescer

    config = write_config(tmp_path, server, token_file, endpoint, pace=", rate: 1, burst: 1")

    def represented() -> int:
        total = 0
        for status in server.statuses:
            head = re.match(r"(\d+) [\w ]+ messages:\n", status["content"])
            total += int(head.group(1)) if head else 1
        return total

    await run_daemon_until(config, endpoint, 30, lambda: represented() >= 30, coalescer=Coalescer(horizon=1.0))

    assert represented() == 30
    assert len(server.statuses) < 10
    summaries = [s["content"] for s in server.statuses if re.match(r"\d+ [\w ]+ messages:\n", s["content"])]
    assert summaries, [s["content"] for s in server.statuses]
    assert all(mastodon_length(text) <= 500 for text in summaries)
    assert len({post.headers["idempotency-key"] for post in server.posts}) == len(server.posts)


async def test_rate_limited_post_is_retried_after_retry_after_and_posted_once(
    tmp_path: Path, server: MastodonServer, token_file: Path, endpoint: str
) -> None:
    """Through the daemon, a 429 with Retry-After: 1 delays the post by a second and it then appears once."""
    config = write_config(tmp_path, server, token_file, endpoint)
    server.script.append(
        Scripted(status=429, error="Too many requests", headers={"Retry-After": "1", "X-RateLimit-Remaining": "0"})
    )
    await run_daemon_until(config, endpoint, 1, lambda: len(server.statuses) >= 1)

    assert len(server.statuses) == 1
    assert len(server.posts) == 2
    first, second = server.posts
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert second.at - first.at >= 1.0
