"""fedmsg envelopes: building them exactly as fedmsg does, and decoding them safely.

On the wire a fedmsg message is a two-frame ZeroMQ multipart ``[topic, body]``;
the body is the JSON envelope ``{"topic", "msg", "timestamp", "msg_id", "i",
"username", ...}`` serialised canonically (sorted keys, compact separators,
ASCII escapes) — the same bytes fedmsg signs, so ours must match byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

# Environments fedmsg deployments use; the topic part after the prefix.
KNOWN_ENVS = frozenset({"prod", "stg", "dev", "test", "local"})
REQUIRED_FIELDS = ("topic", "msg", "timestamp")
MAX_TOPIC_LENGTH = 255
# Space, C0 and C1 controls, DEL, and the Unicode line/paragraph separators.
UNPRINTABLE = re.compile("[\x00-\x20\x7f-\x9f\u2028\u2029]")
DEFAULT_MAX_BYTES = 1_000_000
# Deeper or longer input is refused before parsing: templates, rules and backends walk
# and copy message content, and nothing a real fedmsg service sends comes close.
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_STRING = 256 * 1024
# 9999-12-31T23:59:59Z, the last second ``datetime`` can represent.
MAX_TIMESTAMP = 253_402_300_799

# One JSON string literal, escapes included. Possessive/atomic so a scan never
# backtracks, and an unterminated string simply runs to the end of the text (a lone
# trailing backslash included): every quote that starts a match ends it, which keeps the
# scan linear on any input, valid JSON or not.
_JSON_STRING = re.compile(r'("(?>[^"\\]*+(?:\\.[^"\\]*+)*+)(?:"|\\?\Z))', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# A \u escape of a UTF-16 surrogate: the only way JSON text that is valid UTF-8 can
# carry a lone surrogate, which no later stage (regex engine, IRC, mail) can encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class MalformedMessage(ValueError):
    """A frame set that is not a valid fedmsg message; ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def canonical_json(obj: Any) -> str:
    """Serialise like ``fedmsg.encoding.dumps``: sorted keys, no spaces, ASCII escapes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def new_msg_id(now: float | None = None) -> str:
    """fedmsg's ``msg_id``: ``"<year>-<uuid4>"``."""
    year = time.gmtime(time.time() if now is None else now).tm_year
    return f"{year}-{uuid.uuid4()}"


def build_envelope(
    topic: str,
    msg: Any,
    *,
    i: int,
    username: str,
    timestamp: float | None = None,
    msg_id: str | None = None,
) -> dict[str, Any]:
    """The envelope ``fedmsg.publish`` would send (before any signature is added)."""
    now = time.time() if timestamp is None else timestamp
    return {
        "i": i,
        "msg": msg,
        "msg_id": msg_id or new_msg_id(now),
        "timestamp": int(now),
        "topic": topic,
        "username": username,
    }


@dataclass(frozen=True, slots=True)
class TopicParts:
    """``<prefix>.<env>.<service>.<rest>``; ``subtopic`` is everything after ``env``."""

    prefix: str
    env: str
    service: str
    subtopic: str


def split_topic(topic: str) -> TopicParts:
    parts = topic.split(".")
    index = next((n for n, part in enumerate(parts) if part in KNOWN_ENVS), None)
    if index is None:
        # Unknown environment name: assume fedmsg's usual two-part prefix (org.fedoraproject).
        index = 2 if len(parts) > 3 else min(1, len(parts) - 1)
    prefix = ".".join(parts[:index])
    env = parts[index] if index < len(parts) else ""
    rest = parts[index + 1 :]
    service = rest[0] if rest else ""
    return TopicParts(prefix=prefix, env=env, service=service, subtopic=".".join(rest))


@dataclass(slots=True)
class Message:
    """A decoded, checked envelope plus the topic's parts. Metadata is attached later."""

    topic: str
    envelope: dict[str, Any]
    parts: TopicParts
    msg_id: str
    received: float = field(default_factory=time.time)
    verified: bool | None = None

    @property
    def body(self) -> Any:
        return self.envelope.get("msg")

    @property
    def service(self) -> str:
        return self.parts.service

    @property
    def env(self) -> str:
        return self.parts.env

    @property
    def severity(self) -> int:
        """fedora-messaging's logging level (10 debug … 40 error); fedmsg messages are info (20)."""
        value = self.envelope.get("severity")
        return value if isinstance(value, int) and not isinstance(value, bool) else 20

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch; the receive time when the sender's is not a usable date."""
        value = self.envelope.get("timestamp")
        if isinstance(value, (int, float)) and 0 <= value <= MAX_TIMESTAMP:
            return float(value)
        # NaN, negative or beyond year 9999: datetime (mail Date headers, "3 min ago") cannot take it.
        return self.received

    @classmethod
    def from_envelope(cls, envelope: Any, *, frame_topic: str | None = None) -> Message:
        """Check an already-parsed envelope; raise :class:`MalformedMessage` if it is not one."""
        if not isinstance(envelope, dict):
            raise MalformedMessage("not-an-object", f"body is JSON {type(envelope).__name__}, expected an object")
        missing = [name for name in REQUIRED_FIELDS if name not in envelope]
        if missing:
            raise MalformedMessage("missing-fields", f"envelope lacks {', '.join(missing)}")
        topic = envelope["topic"]
        if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LENGTH:
            raise MalformedMessage("bad-topic", f"envelope topic is not a string of 1 to {MAX_TOPIC_LENGTH} characters")
        if UNPRINTABLE.search(topic):
            # Topics are dotted words; whitespace or control characters in one can only be
            # an attempt to smuggle a line break into a subject, an IRC line or a summary.
            raise MalformedMessage("bad-topic", "envelope topic contains whitespace or control characters")
        if frame_topic is not None and frame_topic != topic:
            raise MalformedMessage("topic-mismatch", f"frame topic {frame_topic!r} != envelope topic {topic!r}")
        if not isinstance(envelope["timestamp"], (int, float)) or isinstance(envelope["timestamp"], bool):
            raise MalformedMessage("bad-timestamp", "timestamp is not a number")
        msg_id = envelope.get("msg_id")
        if msg_id is None:
            # Messages from before fedmsg added msg_id: derive a stable id for dedup.
            msg_id = "sha1-" + hashlib.sha1(canonical_json(envelope).encode()).hexdigest()
        elif not isinstance(msg_id, str) or not msg_id or len(msg_id) > 200 or UNPRINTABLE.search(msg_id):
            raise MalformedMessage("bad-msg-id", "msg_id is not a short printable string")
        return cls(topic=topic, envelope=envelope, parts=split_topic(topic), msg_id=msg_id)


def check_bounds(text: str, *, max_depth: int = DEFAULT_MAX_DEPTH, max_string: int = DEFAULT_MAX_STRING) -> None:
    """Refuse JSON text nested deeper than ``max_depth`` or with a string longer than ``max_string``.

    Works on the raw text, before parsing, in C-speed passes: a regex finds string
    literals (so brackets inside strings do not count) and the nesting depth is the
    running maximum of the bracket sequence. String length is measured as written on the wire
    (escapes count as written: fedmsg escapes non-ASCII, so that is also what the limit
    on message size counts).
    """
    # Fast paths: most messages are far too short to hold a long string and have too few
    # brackets to be deep, which str.count/len tell without scanning in Python.
    if len(text) > max_string + 2:
        longest = max(map(len, _JSON_STRING.findall(text)), default=2) - 2
        if longest > max_string:
            raise MalformedMessage("string-too-long", f"a string of {longest} characters, limit {max_string}")
    if text.count("[") + text.count("{") > max_depth:
        brackets = _BRACKETS.findall(_JSON_STRING.sub("", text))
        depth = max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)
        if depth > max_depth:
            raise MalformedMessage("too-deep", f"JSON nested {depth} levels deep, limit {max_depth}")


def decode_frames(
    frames: list[bytes],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_string: int = DEFAULT_MAX_STRING,
) -> Message:
    """Decode one ZeroMQ multipart into a :class:`Message`, checking everything fedmsg implies.

    Size, nesting depth and string length are checked before the JSON is parsed.
    """
    if len(frames) != 2:
        raise MalformedMessage("frame-count", f"{len(frames)} frames, expected 2 (topic, body)")
    raw_topic, raw_body = frames
    size = len(raw_topic) + len(raw_body)
    if size > max_bytes:
        raise MalformedMessage("too-large", f"{size} bytes, limit {max_bytes}")
    try:
        topic = raw_topic.decode("utf-8")
        text = raw_body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("invalid-utf8", str(exc)) from None
    return decode_text(text, frame_topic=topic, max_depth=max_depth, max_string=max_string)


def decode_text(
    text: str,
    *,
    frame_topic: str | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_string: int = DEFAULT_MAX_STRING,
) -> Message:
    """Decode one envelope's JSON text (from the bus, a file or stdin) with the same checks as the bus."""
    check_bounds(text, max_depth=max_depth, max_string=max_string)
    try:
        envelope = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("invalid-json", str(exc)[:200]) from None
    if _SURROGATE_ESCAPE.search(text):
        # Rare (a surrogate pair escape is legitimate): only then serialise once to find a lone one.
        try:
            json.dumps(envelope, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedMessage("invalid-unicode", "a \\u escape encodes a lone UTF-16 surrogate") from None
    return Message.from_envelope(envelope, frame_topic=frame_topic)
