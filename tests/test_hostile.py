"""Hostile input, end to end: bounded decoding, and property tests over every stage a message passes.

Whatever arrives on the bus — arbitrary frames, absurd nesting, strings built to inject
IRC commands or mail headers, lone surrogates — the decoder raises only
``MalformedMessage``, signature checking only returns verdicts, rule evaluation and
metadata never raise, and every backend's formatter produces output that says nothing
it was not told to say: no CR/LF/NUL in an IRC line, no extra mail header.
"""

from __future__ import annotations

import asyncio
import copy
import email
import email.policy
import io
import json
import logging
import re
import time
from email.headerregistry import Address
from pathlib import Path
from typing import Any

import pytest
import yaml
from fedmsg_notify.backend import Backend, DeliveryError, Destination, Item
from fedmsg_notify.backends import backend_class, backend_names
from fedmsg_notify.bus.envelope import (
    MAX_TOPIC_LENGTH,
    UNPRINTABLE,
    MalformedMessage,
    Message,
    build_envelope,
    canonical_json,
    check_bounds,
    decode_frames,
)
from fedmsg_notify.bus.signatures import SignatureSettings, Verifier, wrap_b64
from fedmsg_notify.bus.zeromq import Publisher, Subscriber
from fedmsg_notify.config.model import Config, load_config
from fedmsg_notify.config.yaml_positions import ProblemsError, load_located
from fedmsg_notify.matching.rules import Route, Rule, RuleSet
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.render.renderer import Renderer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.childio import read_lines

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = [json.loads(line) for line in (ROOT / "notifier/data/samples.jsonl").read_text().splitlines() if line.strip()]
FEDMSG_KEYS = next(ROOT.glob(".venv-fedmsg/lib/python*/site-packages/fedmsg/tests/test_certs/keys"), None)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings built to break out of a line, a header, a template or a terminal.
INJECTIONS = [
    "\r\nQUIT :bye",
    "\nPRIVMSG #other :spam",
    "\r",
    "\n",
    "\x00",
    "\r\n\r\n",
    "\u2028",
    "\u2029",
    "\x85",
    "\x0b\x0c",
    "\x01ACTION pwns\x01",
    "\x1b[2J\x1b[31m",
    "\x0304,01red\x02bold\x0f",
    "\nBcc: victim@example.org",
    "\r\nContent-Type: text/html\r\n\r\n<script>alert(1)</script>",
    "=?utf-8?q?=0D=0ABcc:_victim@example.org?=",
    "=?utf-8?q?=0D=0ABcc:_victim=40example=2Eorg?=",  # no dots: survives being a topic part
    "=?utf-8?b?DQpCY2M6IHZpY3RpbUBleGFtcGxlLm9yZw==?=",
    "<b onclick='x()'>bold</b> &amp; &lt;",
    "{{ ''.__class__.__mro__ }}",
    "{% for x in range(99999999) %}",
    "@admin@mastodon.social",
    "\u202eevil",
    "\ud800",  # a lone surrogate: valid in JSON text, unencodable as UTF-8
    "é✓😀" * 3,
    "x" * 700,
    " ",
    "",
]
FIELDS = ["user", "agent", "owner", "name", "comment", "text", "title", "update", "builds", "nvr", "package", "url"]

hostile_text = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=12)), min_size=1, max_size=4).map("".join),
)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), hostile_text
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), hostile_text), children, max_size=4),
    ),
    max_leaves=20,
)
hostile_topic = st.one_of(
    st.sampled_from([s["message"]["topic"] for s in SAMPLES]),
    st.builds(
        lambda service, rest: f"org.fedoraproject.prod.{service}.{rest}",
        st.one_of(st.sampled_from(["bodhi", "koji", "buildsys", "pagure", "copr"]), hostile_text),
        hostile_text,
    ),
    hostile_text.filter(bool),
)


def _mutate(value: Any, data: _Draw) -> Any:
    """A copy of a real message body with some of its strings replaced by hostile text."""
    if isinstance(value, dict):
        return {k: _mutate(v, data) for k, v in value.items()}
    if isinstance(value, list):
        return [_mutate(v, data) for v in value[:5]]
    if isinstance(value, str) and data.draw(st.integers(0, 2), label="replace?") == 0:
        return data.draw(hostile_text, label="text")
    return value


@st.composite
def hostile_messages(draw: st.DrawFn) -> Message:
    """Real sample messages with hostile strings in their fields, or wholly invented ones."""
    if draw(st.booleans(), label="from a sample?"):
        sample = draw(st.sampled_from(SAMPLES), label="sample")["message"]
        envelope = copy.deepcopy(sample)
        envelope["msg"] = _mutate(envelope.get("msg"), _Draw(draw))
        if draw(st.booleans(), label="hostile topic?"):
            envelope["topic"] = draw(hostile_topic)
    else:
        envelope = build_envelope(draw(hostile_topic), draw(json_value), i=1, username=draw(hostile_text))
    envelope["timestamp"] = draw(st.sampled_from([envelope.get("timestamp", 0), 0, -1, 1e12, time.time() - 3600]))
    # Through the real decoder: later stages only ever see what it lets through.
    try:
        return decode_frames(frames_of(canonical_json(envelope), str(envelope["topic"])))
    except MalformedMessage:
        pass
    # Refused at the door (a topic that is not dotted words, a lone surrogate, ...): the same
    # generated parts made valid, so the later stages still see this example's content.
    # What the decoder refuses is test_refused_messages_are_malformed_never_a_crash's subject.
    envelope = _valid_utf8(envelope)
    if not _admissible_topic(envelope.get("topic")):
        envelope["topic"] = "org.fedoraproject.prod.bodhi.update.comment"
    try:
        return decode_frames(frames_of(canonical_json(envelope), str(envelope["topic"])))
    except MalformedMessage:
        assume(False)  # too deep or too big even once repaired: hypothesis draws another
        raise


def _admissible_topic(topic: object) -> bool:
    """The decoder's own rule: a non-empty string of printable characters, not too long."""
    return isinstance(topic, str) and 0 < len(topic) <= MAX_TOPIC_LENGTH and not UNPRINTABLE.search(topic)


def _valid_utf8(value: Any) -> Any:
    """``value`` with lone surrogates in every string (keys included) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_valid_utf8(v) for v in value]
    if isinstance(value, dict):
        return {_valid_utf8(k): _valid_utf8(v) for k, v in value.items()}
    return value


@st.composite
def refused_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """Envelopes built from the same hostile parts; many are refused by the decoder."""
    sample = copy.deepcopy(draw(st.sampled_from(SAMPLES), label="sample")["message"])
    sample["msg"] = _mutate(sample.get("msg"), _Draw(draw))
    sample["topic"] = draw(st.one_of(hostile_topic, hostile_text), label="topic")
    return sample


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(refused_envelopes())
def test_refused_messages_are_malformed_never_a_crash(envelope: dict[str, Any]) -> None:
    """The decoder refuses a bad envelope with MalformedMessage and a short reason; what it admits is clean."""
    topic = str(envelope["topic"])
    try:
        message = decode_frames(frames_of(canonical_json(envelope), topic))
    except MalformedMessage as exc:
        assert exc.reason and " " not in exc.reason and "\n" not in str(exc)
        return
    assert _admissible_topic(message.topic), message.topic
    message.topic.encode("utf-8")  # no lone surrogate got through


class _Draw:
    """Adapts a composite's ``draw`` to the ``data.draw`` interface :func:`_mutate` uses."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def draw(self, strategy: st.SearchStrategy[Any], label: str | None = None) -> Any:
        return self._draw(strategy, label=label)


# -- bounded input ----------------------------------------------------------------------------


def frames_of(text: str, topic: str = "org.fedoraproject.prod.x.y") -> list[bytes]:
    return [topic.encode("utf-8", "surrogatepass"), text.encode("utf-8", "surrogatepass")]


def envelope_text(msg: Any) -> str:
    return canonical_json(build_envelope("org.fedoraproject.prod.x.y", msg, i=1, username="u"))


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (json.loads("[" * 70 + "]" * 70), "too-deep"),
        ({"a": "x" * (256 * 1024 + 1)}, "string-too-long"),
        ({"x" * (256 * 1024 + 1): 1}, "string-too-long"),
    ],
    ids=["deep", "long-value", "long-key"],
)
def test_bounds_are_enforced_before_parsing(msg: Any, reason: str) -> None:
    """Absurdly nested JSON or a giant string is refused as malformed, with the limit in the message."""
    with pytest.raises(MalformedMessage) as caught:
        decode_frames(frames_of(envelope_text(msg)))
    assert caught.value.reason == reason
    assert "limit" in caught.value.detail


def test_lone_surrogates_are_refused_but_pairs_are_text() -> None:
    """A \\u escape of half a UTF-16 pair cannot be encoded for any recipient, so it is refused as malformed."""
    with pytest.raises(MalformedMessage, match="invalid-unicode"):
        decode_frames(frames_of(envelope_text({"text": "\ud800"})))
    assert decode_frames(frames_of(envelope_text({"text": "\U0001f600 \\ud800"}))).body["text"] == "\U0001f600 \\ud800"


def test_brackets_and_escapes_inside_strings_do_not_count() -> None:
    """A comment full of brackets and escaped quotes is an ordinary message, not 'too deep'."""
    text = "[[[[{{{{" * 40 + '\\"]]]' + "\\\\"
    message = decode_frames(frames_of(envelope_text({"comment": text, "nested": [[[[["ok"]]]]]})))
    assert message.body["comment"] == text


def test_limits_are_configurable(tmp_path: Path) -> None:
    """`bus: max_json_depth / max_string_length` change where messages are cut off."""
    config = load_config(tmp_path / "c.yaml", "bus: {max_json_depth: 8, max_string_length: 2048}\n")
    assert (config.max_json_depth, config.max_string_length) == (8, 2048)
    text = envelope_text({"a": [[[[[[["deep"]]]]]]]})
    with pytest.raises(MalformedMessage, match="too-deep"):
        decode_frames(frames_of(text), max_depth=config.max_json_depth)
    assert decode_frames(frames_of(text)).body["a"][0][0][0][0][0][0][0] == "deep"
    with pytest.raises(ProblemsError):
        load_config(tmp_path / "c.yaml", "bus: {max_json_depth: 100000}\n")


def test_scanner_is_linear_on_pathological_text() -> None:
    """Quote-and-backslash soup that would make a naive string regex quadratic is scanned in well under a second."""
    for text in ['"\\"' * 200_000 + "\\", '"' + '\\"' * 300_000 + "\\", "[" * 500_000, '"' * 600_000]:
        started = time.perf_counter()
        try:
            check_bounds(text)
        except MalformedMessage:
            pass
        assert time.perf_counter() - started < 1.0


async def test_subscriber_counts_oversized_input_as_malformed(endpoint: str) -> None:
    """Deep or long messages from the wire are counted by reason and the next good message still arrives."""
    subscriber = Subscriber([endpoint], max_depth=16)
    good = build_envelope("org.fedoraproject.prod.x.y", {"ok": True}, i=1, username="u")

    def send() -> None:
        publisher = Publisher(endpoint, wait=5.0)
        publisher.send_raw(frames_of(envelope_text(json.loads("[" * 20 + "]" * 20))))
        publisher.send_raw(frames_of(envelope_text({"s": "x" * 300_000})))
        publisher.send_envelope(good)
        publisher.close()

    try:
        sender = asyncio.create_task(asyncio.to_thread(send))
        async with asyncio.timeout(20):
            message = await anext(subscriber.messages())
        await sender
    finally:
        subscriber.close()
    assert message.msg_id == good["msg_id"]
    assert subscriber.malformed == {"too-deep": 1, "string-too-long": 1}


# -- property: the decoder ----------------------------------------------------------------------


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


raw_frames = st.one_of(
    st.lists(st.binary(max_size=300), max_size=4),
    st.tuples(hostile_topic, json_value).map(
        lambda t: [t[0].encode("utf-8", "surrogatepass"), json.dumps(t[1]).encode()]
    ),
    st.tuples(
        hostile_topic,
        hostile_topic,
        st.dictionaries(st.sampled_from(["topic", "msg", "timestamp", "msg_id", "i"]), json_value),
    ).map(lambda t: [t[0].encode("utf-8", "surrogatepass"), json.dumps(dict(t[2], topic=t[1])).encode()]),
    st.builds(
        lambda n, s: [b"t", (("[" * n) + s + ("]" * n)).encode("utf-8", "surrogatepass")],
        st.integers(0, 200),
        hostile_text,
    ),
)


@PROPERTY
@given(raw_frames)
def test_decoder_raises_only_malformed(frames: list[bytes]) -> None:
    """Arbitrary frames never crash the decoder: each is a Message or a counted MalformedMessage."""
    try:
        message = decode_frames(frames)
    except MalformedMessage as exc:
        assert exc.reason
        return
    # Everything downstream reads these; none may raise on a decoded message.
    assert isinstance(message.topic, str) and message.msg_id
    assert isinstance(message.timestamp, float)
    assert isinstance(message.service, str) and isinstance(message.env, str)


@PROPERTY
@given(json_value, st.integers(1, 12))
def test_depth_check_agrees_with_the_parsed_structure(value: Any, limit: int) -> None:
    """The raw-text depth scan refuses exactly the JSON that is nested deeper than the limit."""
    text = json.dumps(value)
    deep = _depth(value) > limit
    try:
        check_bounds(text, max_depth=limit)
    except MalformedMessage as exc:
        assert exc.reason == "too-deep" and deep
    else:
        assert not deep


@PROPERTY
@given(
    st.dictionaries(
        st.sampled_from(["topic", "msg", "crypto", "signature", "certificate", "timestamp"]),
        st.one_of(json_value, st.binary(max_size=300).map(wrap_b64), st.sampled_from(["x509", "gpg"])),
    )
)
def test_signature_check_never_raises(envelope: dict[str, Any]) -> None:
    """Whatever sits in the crypto fields, checking a signature gives a refusal, never an exception."""
    assert FEDMSG_KEYS is not None
    verifier = _verifier()
    verdict = verifier.check(envelope)
    assert not verdict.ok and verdict.reason


_VERIFIER: list[Verifier] = []


def _verifier() -> Verifier:
    if not _VERIFIER:
        assert FEDMSG_KEYS is not None, "the fedmsg wheel's test PKI is needed"
        _VERIFIER.append(
            Verifier(SignatureSettings(validate=True, ca_cert=FEDMSG_KEYS / "ca.crt", crl=FEDMSG_KEYS / "crl.pem"))
        )
    return _VERIFIER[0]


# -- property: metadata and rules ----------------------------------------------------------------

RULES = """
me: ralph
rules:
  - name: every operator
    match:
      any:
        - field: {path: msg.comment.user.name, equals: $me}
        - field: {path: "msg.update.builds[*].nvr", matches: "^python-.*-[0-9]+"}
        - field: {path: msg.owner, in: [ralph, "\\r\\nQUIT"]}
        - field: {path: msg.comment.text, contains: "ship"}
        - field: {path: msg.new, gt: 1}
        - field: {path: msg.new, le: 3}
        - field: {path: msg.agent, exists: true}
        - users: [ralph, kevin]
        - packages: [python-fedmsg]
        - agent: ralph
        - topic: ["*.bodhi.*", "org.fedoraproject.*.koji.*"]
        - not: {service: copr}
    deliver: [{via: out}]
  - name: redos
    match: {field: {path: msg.text, matches: "(a+)+$"}}
    deliver: [{via: redos}]
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, RuleSet, MetaEngine]:
    directory = tmp_path_factory.mktemp("hostile")
    (directory / "rules.yaml").write_text(RULES)
    config = load_config(
        directory / "config.yaml",
        "accounts:\n"
        "  out: {backend: console}\n"
        "  redos: {backend: console}\n"
        "  firehose: {backend: console}\n"
        "  desktop: {backend: console}\n"
        "  mail: {backend: email, smtp: 'maildir:/nonexistent', from: 'n <n@example.org>'}\n",
    )
    rule_paths = (*config.rule_paths, directory / "rules.yaml")
    return config, RuleSet.load(rule_paths, config.accounts), MetaEngine(config.service_paths)


@PROPERTY
@given(hostile_messages())
def test_rules_and_meta_never_raise(pipeline: tuple[Config, RuleSet, MetaEngine], message: Message) -> None:
    """Arbitrary message content through metadata and every shipped and test rule routes or not, never raises."""
    _config, rules, meta_engine = pipeline
    meta = meta_engine.compute(message)
    routes = rules.routes(message, meta)
    assert all(route.destination.account in {"out", "redos", "firehose", "desktop", "mail"} for route in routes)


def test_redos_rule_neither_hangs_nor_crashes(pipeline: tuple[Config, RuleSet, MetaEngine]) -> None:
    """The classic catastrophic regex `(a+)+$` against 30 a's and a '!' is evaluated at once."""
    _config, rules, meta_engine = pipeline
    message = Message.from_envelope(
        build_envelope("org.fedoraproject.prod.x.y", {"text": "a" * 30 + "!"}, i=1, username="u")
    )
    started = time.perf_counter()
    routes = rules.routes(message, meta_engine.compute(message))
    assert time.perf_counter() - started < 1.0
    assert "redos" not in {route.rule.name for route in routes}
    matching = Message.from_envelope(
        build_envelope("org.fedoraproject.prod.x.y", {"text": "a" * 30}, i=1, username="u")
    )
    assert "redos" in {route.rule.name for route in rules.routes(matching, meta_engine.compute(matching))}


# -- property: every backend's output ---------------------------------------------------------------

IRC_TARGET = "#fedora-hostile"
RECIPIENT = Address(addr_spec="ralph@example.org")
# Every header our mail may carry; anything else would be injected.
MAIL_HEADERS = {
    "from", "to", "subject", "date", "message-id", "in-reply-to", "references", "list-id", "auto-submitted",
    "precedence", "x-fedmsg-topic", "x-fedmsg-category", "x-fedmsg-username", "x-fedmsg-package", "x-fedmsg-rule",
    "x-fedmsg-count", "mime-version", "content-type", "content-transfer-encoding",
}  # fmt: skip


def _backend(name: str, tmp: Path) -> Backend:
    """An unstarted instance of each backend (formatting needs no server)."""
    cls = backend_class(name)
    options: dict[str, Any] = {"backend": name}
    if name == "irc":
        options.update(server="ircs://irc.example.org:6697", nick="fedbot")
    elif name == "email":
        options.update(smtp="maildir:" + str(tmp / "Maildir"), **{"from": "fedmsg-notify <notify@example.org>"})
    elif name == "mastodon":
        options.update(instance="https://mastodon.example.org", token_file=str(tmp / "token"))
    elif name == "matrix":
        options.update(homeserver="https://matrix.example.org", user_id="@fedbot:example.org",
                       token_file=str(tmp / "token"))
    return cls(name, cls.Account.model_validate(options))


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Backend]:
    tmp = tmp_path_factory.mktemp("backends")
    return {name: _backend(name, tmp) for name in backend_names()}


def _route(backend: type[Backend]) -> Route:
    to = IRC_TARGET if backend.name == "irc" else (str(RECIPIENT) if backend.needs_recipient else None)
    return Route(destination=Destination(account=backend.name, to=to), rule=Rule(name="hostile", file="hostile.yaml"))


def _item(backend: Backend, message: Message, meta: Any, rendered: dict[str, str], count: int = 1) -> Item:
    route = _route(type(backend))
    return Item(
        id=1,
        msg_id=message.msg_id,
        destination=route.destination,
        rule=route.rule.name,
        topic=message.topic,
        service=message.service,
        rendered=rendered,
        meta=meta.as_dict(),
        timestamp=message.timestamp,
        count=count,
    )


def _check_output(backend: Backend, item: Item, *, rendered: bool = True) -> None:
    """Run ``item`` through the backend's own formatter and check what would go on the wire.

    Template output (``rendered``) must already be safe; a flood summary is checked
    where it leaves the process, after the backend's own formatting.
    """
    name = type(backend).name
    if rendered:
        for part in type(backend).line_parts:
            assert not set(item.rendered.get(part, "")) & {"\r", "\n", "\x00"}, (part, item.rendered[part])
    if name == "irc":
        try:
            lines = backend.format(item, IRC_TARGET, "privmsg", split=True)  # type: ignore[attr-defined]
        except DeliveryError:
            return  # e.g. nothing printable left: refused, not sent
        assert 1 <= len(lines) <= 10
        for line in lines:
            assert not set(line) & {"\r", "\n", "\x00"}, line
            assert len(f"PRIVMSG {IRC_TARGET} :{line}\r\n".encode()) <= 512
    elif name == "email":
        from fedmsg_notify.backends.email.compose import Sender, compose

        mail = compose(item, Sender.from_header("fedmsg-notify <notify@example.org>"), RECIPIENT)
        raw = mail.as_bytes()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        names = {key.lower() for key in parsed}
        assert names <= MAIL_HEADERS, names - MAIL_HEADERS
        for single in ("from", "to", "subject", "message-id"):
            assert len(parsed.get_all(single) or []) == 1, single
        assert [a.addr_spec for a in parsed["to"].addresses] == ["ralph@example.org"]
        assert [a.addr_spec for a in parsed["from"].addresses] == ["notify@example.org"]
        assert not set(str(parsed["subject"])) & {"\r", "\n", "\x00"}
        header_block = raw.split(b"\r\n\r\n", 1)[0]
        assert all(len(line) <= 998 for line in header_block.split(b"\r\n"))
    elif name == "mastodon":
        try:
            payload = backend.build_payload(item)  # type: ignore[attr-defined]
        except DeliveryError:
            return
        from fedmsg_notify.backends.mastodon import status_length

        status = payload["status"]
        assert not {ch for ch in status if ord(ch) < 32 and ch not in "\n\t"}, status
        limit = backend.limits.max_characters  # type: ignore[attr-defined]
        assert status_length(status) + len(payload.get("spoiler_text", "")) <= limit
        assert payload["content_type"] == "text/plain"
    elif name == "desktop":
        from fedmsg_notify.backends.desktop import body_for_server, build_popup

        popup = build_popup(item, backend.settings)  # type: ignore[attr-defined]
        assert popup.summary and not set(popup.summary) & {"\r", "\n", "\x00"}
        assert popup.link is None or popup.link.startswith(("http://", "https://"))
        for caps in (frozenset(), frozenset({"body-markup"}), frozenset({"body-markup", "body-hyperlinks"})):
            body = body_for_server(popup, caps)
            assert "\x00" not in body
            if "body-markup" in caps:
                # The only markup a server may see is the one link the backend adds itself.
                tags = re.findall(r"<[^>]*>", body)
                assert all(re.fullmatch(r'<a href="[^"<>]*">|</a>', tag) for tag in tags), tags
                assert len(tags) <= 2
    elif name == "matrix":
        try:
            content = backend.content(item)  # type: ignore[attr-defined]
        except DeliveryError:
            return
        assert not {ch for ch in content["body"] if ord(ch) < 32 and ch != "\n"}, content["body"]
        # The only markup in formatted_body is the template's own (and a summary's <em>).
        tags = re.findall(r"<[^>]*>", content.get("formatted_body", ""))
        allowed = r'<font color="#[0-9a-f]{6}">|</font>|</?(b|em|p|ul|li)>|<a href="https?://[^"<>]*">|</a>'
        assert all(re.fullmatch(allowed, tag) for tag in tags), tags
    elif name == "console":
        out = io.StringIO()
        backend.stream = out  # type: ignore[attr-defined]
        asyncio.run(backend.send(item))
        printed = out.getvalue()
        assert printed.endswith("\n") and not {ch for ch in printed[:-1] if ord(ch) < 32}, printed
    elif rendered:
        # Any other backend: its text parts carry no NUL, its line parts no line break (checked above).
        assert all("\x00" not in value for value in item.rendered.values())


@PROPERTY
@given(hostile_messages(), st.integers(1, 3))
def test_every_backend_output_is_injection_free(
    pipeline: tuple[Config, RuleSet, MetaEngine], backends: dict[str, Backend], message: Message, flood: int
) -> None:
    """For arbitrary message content, each backend's rendered and formatted output keeps to one line per IRC
    message, adds no mail header, and posts plain text only — single messages, digests and flood summaries alike."""
    config, _rules, meta_engine = pipeline
    renderer = _RENDERER.setdefault("r", Renderer(config.template_paths))
    meta = meta_engine.compute(message)
    for backend in backends.values():
        rendered = renderer.render(type(backend), message, meta, _route(type(backend)))
        item = _item(backend, message, meta, rendered)
        _check_output(backend, item)
        if flood > 1 and type(backend).supports_digest:
            entries = [
                {"message": message.envelope, "topic": message.topic, "meta": meta.as_dict(), "rendered": rendered}
            ]
            digest = renderer.render_digest(type(backend), entries * flood, _route(type(backend)), flood + 1)
            _check_output(backend, _item(backend, message, meta, digest, count=flood + 1))
        if flood > 1:
            summary = backend.summarise([item] * flood)
            if summary:
                _check_output(backend, _item(backend, message, meta, dict(summary), count=flood), rendered=False)


_RENDERER: dict[str, Renderer] = {}


@pytest.mark.parametrize("payload", ["\r\nQUIT :bye", "\nPRIVMSG #other :spam", "a\x00b\rc"])
def test_irc_injection_examples_stay_on_one_line(
    pipeline: tuple[Config, RuleSet, MetaEngine], backends: dict[str, Backend], payload: str
) -> None:
    """The issue's examples reach the channel as text on one PRIVMSG line, the payload's words intact."""
    config, _rules, meta_engine = pipeline
    sample = next(s["message"] for s in SAMPLES if s["message"]["topic"].endswith("bodhi.update.comment"))
    envelope = copy.deepcopy(sample)
    envelope["msg"]["comment"]["text"] = f"looks good{payload}"
    message = Message.from_envelope(envelope)
    irc = backends["irc"]
    meta = meta_engine.compute(message)
    rendered = Renderer(config.template_paths).render(type(irc), message, meta, _route(type(irc)))
    lines = irc.format(_item(irc, message, meta, rendered), IRC_TARGET, "privmsg", split=False)  # type: ignore[attr-defined]
    assert len(lines) == 1
    assert not set(lines[0]) & {"\r", "\n", "\x00"}


def test_explain_reports_what_the_daemon_would_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`explain` on a message with a lone surrogate or absurd nesting says the daemon would drop it, no traceback."""
    from fedmsg_notify.commands.cli import main

    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: r\n    match: {field: {path: msg.text, matches: '^a'}}\n    deliver: [{via: out}]\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"accounts: {{out: {{backend: console}}}}\nrules: [{tmp_path / 'rules.yaml'}]\n")
    lines = [
        '{"topic": "org.fedoraproject.prod.x.y", "msg": {"text": "a\\ud800"}, "timestamp": 1}',
        '{"topic": "org.fedoraproject.prod.x.y", "msg": ' + "[" * 100 + "]" * 100 + ', "timestamp": 1}',
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    previous = logging.getLogRecordFactory()
    try:
        assert main(["explain", "-c", str(config), str(tmp_path / "m.jsonl")]) == 1
    finally:
        logging.setLogRecordFactory(previous)
    err = capsys.readouterr().err
    assert "m.jsonl:1: not a fedmsg message (invalid-unicode" in err
    assert "m.jsonl:2: not a fedmsg message (too-deep" in err
    assert "Traceback" not in err


def test_tail_never_writes_control_characters_to_the_terminal(endpoint: str) -> None:
    """`fedmsg-notify tail` prints hostile content as one inert line: no escape sequence, no forged second line."""
    import subprocess
    import sys

    hostile_topic = "org.fedoraproject.prod.bodhi\x1b[2J\x1b]0;pwned\x07.update\r\nFAKE TOPIC"
    tail = subprocess.Popen(
        [sys.executable, "-m", "fedmsg_notify", "tail", "--endpoint", endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        publisher = Publisher(endpoint, wait=10.0)
        # Refused by the decoder (a topic is dotted words), so never printed at all.
        publisher.publish(hostile_topic, {})
        publisher.publish(
            "org.fedoraproject.prod.wiki.article.edit",
            {"user": "ralph", "title": "Page\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x1b[0m\r\nFAKE LINE"},
        )
        publisher.publish("org.fedoraproject.prod.x.done", {})
        publisher.close()
        assert tail.stdout is not None
        first, second = read_lines(tail.stdout, 2)
    finally:
        tail.kill()
        tail.communicate()
    assert first.startswith(b"org.fedoraproject.prod.wiki.article.edit"), first
    assert first.endswith(b"\n") and b"FAKE LINE" in first
    assert not set(first[:-1]) & {0x1B, 0x07, 0x0D, 0x0A, 0x00}, first
    assert second.startswith(b"org.fedoraproject.prod.x.done")


# -- property: rule files written by anyone ----------------------------------------------------------

RULE_KEYS = [
    "name", "match", "deliver", "topic", "service", "env", "users", "agent", "packages", "field", "path",
    "equals", "in", "matches", "contains", "exists", "gt", "ge", "lt", "le", "any", "all", "not", "via", "to",
    "digest", "every", "max", "template", "me", "rules", "urgency",
]  # fmt: skip
RULE_LEAVES = st.one_of(
    st.sampled_from(["out", "redos", "$me", "*", "*.bodhi.*", "msg.a[*].b", "msg.", "[*]", "(a+)+$", "[", "(?<=x)y",
                     "\\p{Greek}", "1h", "-5m", "#chan", "ralph@example.org", "", "a" * 3000]),
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.none(), hostile_text,
)  # fmt: skip
rule_yaml = st.recursive(
    RULE_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(RULE_KEYS), children, max_size=4)
    ),
    max_leaves=25,
)


MATCH_KEYS = ["topic", "service", "env", "users", "agent", "packages", "field", "any", "all", "not"]
FIELD_OPS = ["equals", "in", "matches", "contains", "exists", "gt", "ge", "lt", "le"]
condition = st.recursive(
    st.one_of(
        st.builds(
            lambda k, v: {k: v}, st.sampled_from(MATCH_KEYS[:6]), RULE_LEAVES | st.lists(RULE_LEAVES, max_size=3)
        ),
        st.builds(
            lambda path, op, v: {"field": {"path": path, op: v}},
            st.sampled_from(
                ["msg.comment.user.name", "msg.update.builds[*].nvr", "msg.owner", "msg", "topic", "msg.[*]"]
            ),
            st.sampled_from(FIELD_OPS),
            RULE_LEAVES | st.lists(RULE_LEAVES, max_size=3),
        ),
    ),
    lambda c: st.one_of(
        st.builds(lambda k, cs: {k: cs}, st.sampled_from(["any", "all"]), st.lists(c, max_size=3)),
        c.map(lambda inner: {"not": inner}),
    ),
    max_leaves=6,
)
well_formed_rules = st.lists(
    st.builds(
        lambda name, match, via: {"name": name, "match": match, "deliver": [{"via": via}]},
        hostile_text,
        condition,
        st.sampled_from(["out", "redos", "nope"]),
    ),
    max_size=4,
).map(lambda rules: {"me": "ralph", "rules": rules})


@PROPERTY
@given(
    st.one_of(rule_yaml, well_formed_rules, st.lists(rule_yaml, max_size=3).map(lambda r: {"me": "ralph", "rules": r}))
)
def test_any_rule_file_loads_or_is_reported(pipeline: tuple[Config, RuleSet, MetaEngine], document: Any) -> None:
    """Whatever a rule file says, loading it gives rules or positioned problems, and loaded rules evaluate safely."""
    config, _rules, meta_engine = pipeline
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        doc = load_located("hostile-rules.yaml", text)
        ruleset = RuleSet.from_documents([doc], config.accounts)
    except ProblemsError as exc:
        assert exc.problems and all(str(p).startswith("hostile-rules.yaml:") for p in exc.problems)
        return
    for message in _valid_samples()[:20]:
        ruleset.routes(message, meta_engine.compute(message))


def _valid_samples() -> list[Message]:
    messages = []
    for sample in SAMPLES:
        try:
            messages.append(Message.from_envelope(sample["message"]))
        except MalformedMessage:
            pass  # the sample file also holds messages the daemon must drop
    return messages


def test_status_shows_remote_failure_text_inertly() -> None:
    """A server's error text with terminal escapes or line breaks shows in `status` as one plain line."""
    from fedmsg_notify.commands.status import render_text
    from fedmsg_notify.store.records import DestinationStatus

    row = DestinationStatus(
        destination="irc:#chan",
        account="irc",
        in_retry=1,
        next_retry=time.time() + 60,
        last_retry_reason="ERROR :Closing link\x1b]0;pwned\x07\r\nfake: line",
        failed=1,
        last_failure="550 no\x1b[2J such user\nforged",
    )
    text = render_text("/state.db", [row], {}, time.time())
    assert not {ch for ch in text if ord(ch) < 32 and ch != "\n"}, text
    assert "Closing link]0;pwned fake: line" in text and "550 no[2J such user forged" in text
    assert len(text.splitlines()) == 6
