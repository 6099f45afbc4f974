"""Envelopes: built exactly as fedmsg builds them, decoded with every check fedmsg implies."""

from __future__ import annotations

import json
import re

import pytest
from fedmsg_notify.bus.envelope import (
    MalformedMessage,
    Message,
    build_envelope,
    canonical_json,
    decode_frames,
    split_topic,
)

TOPIC = "org.fedoraproject.dev.bodhi.update.comment"


def test_canonical_json_matches_fedmsg_bytes() -> None:
    """Signatures cover these bytes, so sorted keys, compact separators and ASCII escapes must match fedmsg."""
    envelope = {"topic": TOPIC, "msg": {"b": 1, "a": "é"}, "i": 1}
    assert canonical_json(envelope) == (
        '{"i":1,"msg":{"a":"\\u00e9","b":1},"topic":"org.fedoraproject.dev.bodhi.update.comment"}'
    )


def test_build_envelope_has_fedmsg_fields() -> None:
    """A published envelope carries i, msg, msg_id "<year>-<uuid4>", integer timestamp, topic and username."""
    envelope = build_envelope(TOPIC, {"x": 1}, i=3, username="root", timestamp=1795809130.7)
    assert envelope["i"] == 3
    assert envelope["timestamp"] == 1795809130
    assert envelope["username"] == "root"
    assert re.fullmatch(r"2026-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", envelope["msg_id"])
    assert sorted(envelope) == ["i", "msg", "msg_id", "timestamp", "topic", "username"]


@pytest.mark.parametrize(
    ("topic", "env", "service", "subtopic"),
    [
        ("org.fedoraproject.prod.bodhi.update.comment", "prod", "bodhi", "bodhi.update.comment"),
        ("org.fedoraproject.stg.buildsys.build.state.change", "stg", "buildsys", "buildsys.build.state.change"),
        ("org.release-monitoring.prod.anitya.project.add", "prod", "anitya", "anitya.project.add"),
        ("org.example.weird.svc.thing", "weird", "svc", "svc.thing"),
    ],
)
def test_split_topic_finds_service_and_subtopic(topic: str, env: str, service: str, subtopic: str) -> None:
    """Rules and templates key on the service (fedmsg's category) and the part after the environment."""
    parts = split_topic(topic)
    assert (parts.env, parts.service, parts.subtopic) == (env, service, subtopic)


def good_frames(**overrides: object) -> list[bytes]:
    envelope = build_envelope(TOPIC, {"agent": "ralph"}, i=1, username="u")
    envelope.update(overrides)
    return [str(envelope["topic"]).encode(), json.dumps(envelope).encode()]


def test_decode_good_message() -> None:
    """A well-formed frame pair becomes a Message with its topic parts and msg_id."""
    frames = good_frames()
    message = decode_frames(frames)
    assert message.topic == TOPIC
    assert message.service == "bodhi"
    assert message.body == {"agent": "ralph"}
    assert message.msg_id == json.loads(frames[1])["msg_id"]


@pytest.mark.parametrize(("timestamp", "year"), [(1767225599.9, "2025"), (1767225600.0, "2026"), (1798761600.0, "2027")])
def test_msg_id_year_is_the_timestamps_year(timestamp: float, year: str) -> None:
    """The msg_id's year comes from the envelope's own (UTC) timestamp, not from today's date."""
    envelope = build_envelope(TOPIC, {}, i=1, username="u", timestamp=timestamp)
    assert envelope["msg_id"].split("-", 1)[0] == year


def test_relay_spacing_is_accepted() -> None:
    """A relay re-serialises bodies with other spacing: parsed JSON is compared, never bytes."""
    frames = good_frames()
    frames[1] = json.dumps(json.loads(frames[1]), indent=2).encode()
    assert decode_frames(frames).topic == TOPIC


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([TOPIC.encode()], "frame-count"),
        ([TOPIC.encode(), b"{}", b"extra"], "frame-count"),
        ([TOPIC.encode(), b"\xff\xfe{}"], "invalid-utf8"),
        ([b"\xc3", b"{}"], "invalid-utf8"),
        ([TOPIC.encode(), b"{not json"], "invalid-json"),
        ([TOPIC.encode(), b"[1, 2, 3]"], "not-an-object"),
        ([TOPIC.encode(), b'{"topic": "' + TOPIC.encode() + b'"}'], "missing-fields"),
        ([b"org.other.topic", good_frames()[1]], "topic-mismatch"),
        ([TOPIC.encode(), b'{"topic": "' + TOPIC.encode() + b'", "msg": {}, "timestamp": "now"}'], "bad-timestamp"),
        ([TOPIC.encode(), b"{" + b" " * 2_000_000 + b"}"], "too-large"),
    ],
)
def test_malformed_frames_are_rejected_with_reason(frames: list[bytes], reason: str) -> None:
    """Each kind of garbage is refused with a reason that the daemon counts and logs."""
    with pytest.raises(MalformedMessage) as caught:
        decode_frames(frames)
    assert caught.value.reason == reason


def test_message_without_msg_id_gets_stable_id() -> None:
    """Old messages without msg_id still dedup: the same envelope always gets the same id."""
    envelope = {"topic": TOPIC, "msg": {}, "timestamp": 1}
    first = Message.from_envelope(dict(envelope))
    second = Message.from_envelope(dict(envelope))
    assert first.msg_id == second.msg_id
    assert first.msg_id.startswith("sha1-")


@pytest.mark.parametrize(
    "topic",
    ["org.fedoraproject.prod.bo\r\nQUIT :x.y", "org.fedoraproject.prod.bodhi update", "org.x.prod.a\x00b", "a" * 300],
)
def test_topics_with_whitespace_or_controls_are_refused(topic: str) -> None:
    """A topic that could carry a line break into a summary, subject or IRC line never gets in."""
    envelope = {"topic": topic, "msg": {}, "timestamp": 1, "msg_id": "x"}
    with pytest.raises(MalformedMessage) as caught:
        decode_frames([topic.encode(), json.dumps(envelope).encode()])
    assert caught.value.reason == "bad-topic"


def test_msg_id_with_line_break_is_refused() -> None:
    """msg_id ends up in Message-ID headers and keys: a line break in it is refused."""
    with pytest.raises(MalformedMessage) as caught:
        Message.from_envelope({"topic": TOPIC, "msg": {}, "timestamp": 1, "msg_id": "a\r\nBcc: x"})
    assert caught.value.reason == "bad-msg-id"
