"""The AMQP wire format and the commands on it: decoding, config, publish/consume, tail, explain."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.amqp import decode_amqp
from fedmsg_notify.bus.envelope import MalformedMessage
from fedmsg_notify.config.model import load_config
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.rabbitmqserver import RabbitMQ, fedora_messaging_config, fedora_publish
from tests.test_amqp import amqp_config, bodhi_comment, broker

__all__ = ["broker"]  # the module-scoped RabbitMQ fixture, one node for this module


def test_wire_format_maps_to_the_envelope() -> None:
    """Routing key = topic, body = msg, message_id = msg_id, sent-at = timestamp, headers kept."""
    message = decode_amqp(
        "org.fedoraproject.prod.bodhi.update.comment",
        json.dumps(bodhi_comment()).encode(),
        message_id="abc-1",
        headers={
            "fedora_messaging_schema": "bodhi.update.comment.v1",
            "sent-at": "2026-12-02T10:00:00+00:00",
            "fedora_messaging_severity": 30,
            "fedora_messaging_user_ralph": True,
        },
        content_type="application/json",
        received=5.0,
    )
    assert message.topic == "org.fedoraproject.prod.bodhi.update.comment"
    assert message.msg_id == "abc-1"
    assert message.body == bodhi_comment()
    assert message.timestamp == 1796205600.0
    assert message.envelope["severity"] == 30
    assert message.envelope["headers"]["fedora_messaging_user_ralph"] is True
    with pytest.raises(MalformedMessage) as info:
        decode_amqp("t.prod.x", b"[1]" * 10, message_id=None, headers={}, received=0.0)
    assert info.value.reason == "invalid-json"
    with pytest.raises(MalformedMessage) as info:
        decode_amqp("t.prod.x", b"{}", message_id=None, headers={}, received=0.0)
    assert info.value.reason == "bad-msg-id"


def test_config_with_only_amqp_is_valid_and_bad_amqp_settings_name_file_and_line(tmp_path: Path) -> None:
    from fedmsg_notify.config.yaml_positions import ProblemsError

    good = amqp_config(tmp_path, "{url: 'amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub', queue: abc}")
    config = load_config(good)
    assert config.endpoints == ()
    assert config.amqp is not None and config.amqp.queue == "abc" and config.amqp.routing_keys == ("#",)
    assert config.amqp.exchange == "amq.topic" and config.amqp.prefetch == 100
    cases = {
        "{url: 'http://example.org'}": "is not an AMQP address",
        "{url: 'amqps://h/', cert: /nonexistent/cert.pem}": "cannot read /nonexistent/cert.pem",
        f"{{url: 'amqps://h/', key: '{good}'}}": "'key' needs 'cert'",
        "{url: 'amqp://h/', prefech: 5}": "prefech",
        "{url: 'amqp://h/', prefetch: 0}": "prefetch",
    }
    for amqp, expected in cases.items():
        path = amqp_config(tmp_path, amqp)
        with pytest.raises(ProblemsError) as info:
            load_config(path)
        text = "\n".join(str(problem) for problem in info.value.problems)
        assert expected in text, text
        assert f"{path}:2:" in text, text


def _wait_for_text(path: Path, text: str, proc: Any, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = path.read_text(errors="replace") if path.exists() else ""
        if text in out:
            return out
        assert proc.poll() is None, f"the process ended: {out[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in {out[-3000:]!r}"
        time.sleep(0.1)


def _cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "fedmsg_notify", *args]


def test_our_publish_is_read_by_fedora_messaging_consume_with_the_right_schema(
    broker: RabbitMQ, tmp_path: Path
) -> None:
    """``fedmsg-notify publish --amqp`` emits the fedora-messaging wire format: its consumer builds the schema class."""
    import os
    import shutil
    import subprocess

    queue = f"q-{uuid.uuid4()}"
    fm = fedora_messaging_config(tmp_path, broker.url, queue=queue)
    consumer_bin = shutil.which("fedora-messaging", path=os.path.dirname(__import__("sys").executable))
    assert consumer_bin is not None
    out = tmp_path / "consume.out"
    with out.open("wb") as sink:
        consumer = subprocess.Popen(
            [consumer_bin, "--conf", str(fm), "consume", "--callback", "fedora_messaging.example:printer"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while queue not in broker.bound_queues():
            assert consumer.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "fedora-messaging consume never bound its queue"
            time.sleep(0.2)
        done = subprocess.run(
            _cli(
                "-v",
                "publish",
                "--amqp",
                broker.url,
                "--topic",
                "org.fedoraproject.prod.bodhi.update.comment",
                "--schema",
                "bodhi.update.comment.v1",
                "--msg",
                json.dumps(bodhi_comment(user="carol")),
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        # UpdateCommentV1.__str__: only the bodhi schema class, not the base one, writes this.
        text = _wait_for_text(out, "carol commented on bowlofeggs's update FEDORA-2026-abc123 with karma 1", consumer)
        assert "works for me" in text
    finally:
        consumer.terminate()
        consumer.wait(30)


def test_tail_on_amqp_prints_the_schemas_summary(broker: RabbitMQ, tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "tail.out"
    before = broker.bound_queues()
    with out.open("wb") as sink:
        tail = subprocess.Popen(_cli("tail", "--amqp", broker.url), stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not broker.bound_queues() - before:
            assert tail.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "tail never declared its queue"
            time.sleep(0.2)
        fedora_publish(
            fedora_messaging_config(tmp_path, broker.url),
            [
                {
                    "schema": "bodhi.update.comment.v1",
                    "topic": "org.fedoraproject.prod.bodhi.update.comment",
                    "body": bodhi_comment(user="dave"),
                }
            ],
        )
        text = _wait_for_text(out, "dave commented on update python-foo-1.0-1.fc41 (karma: 1)", tail)
        assert "https://bodhi.fedoraproject.org/updates/FEDORA-2026-abc123" in text
    finally:
        tail.terminate()
        tail.wait(30)


HEADER_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=50), st.binary(max_size=50))


@settings(max_examples=300, deadline=None)
@given(
    routing_key=st.text(max_size=80),
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda v: json.dumps(v).encode(),
            st.recursive(
                st.one_of(st.none(), st.integers(), st.text(max_size=20)),
                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                max_leaves=20,
            ),
        ),
    ),
    message_id=st.one_of(st.none(), st.text(max_size=40)),
    headers=st.dictionaries(st.text(max_size=30), HEADER_VALUES, max_size=6),
    content_type=st.sampled_from([None, "application/json", "text/plain", "application/json; charset=utf-8"]),
)
def test_decoding_any_amqp_input_gives_a_message_or_a_malformed_reason(
    routing_key: str, body: bytes, message_id: str | None, headers: dict[str, Any], content_type: str | None
) -> None:
    """No input raises anything but MalformedMessage, and what decodes is a JSON-safe, printable-topic envelope."""
    try:
        message = decode_amqp(
            routing_key, body, message_id=message_id, headers=headers, content_type=content_type, received=1.0
        )
    except MalformedMessage as exc:
        assert exc.reason
        return
    json.dumps(message.envelope)
    assert message.topic == routing_key and message.msg_id == message_id
    assert 0 <= message.severity <= 100


def test_explain_says_the_schema_produced_the_metadata(tmp_path: Path) -> None:
    """An AMQP message (as ``tail --json`` prints it) explained: the meta comes from the schema, and says so."""
    import subprocess

    message = decode_amqp(
        "org.fedoraproject.prod.bodhi.update.comment",
        json.dumps(bodhi_comment()).encode(),
        message_id="explain-1",
        headers={"fedora_messaging_schema": "bodhi.update.comment.v1", "fedora_messaging_severity": 30},
        content_type="application/json",
        received=1.0,
    )
    (tmp_path / "msg.json").write_text(json.dumps(message.envelope))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text(
        "rules:\n  - {name: loud, match: {severity: {ge: warning}}, deliver: [{via: out}]}\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"accounts: {{out: {{backend: console}}}}\nrules: [{tmp_path / 'rules'}]\n")
    done = subprocess.run(
        _cli("explain", "-c", str(config), str(tmp_path / "msg.json")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "source: schema bodhi.update.comment.v1" in done.stdout
    assert "subtitle: ralph commented on update python-foo-1.0-1.fc41 (karma: 1)" in done.stdout
    assert "matched 'loud'" in done.stdout


def test_user_and_package_headers_add_to_the_service_files_metadata() -> None:
    """Without a schema package for the message, its fedora_messaging_user_/_rpm_ headers still name who and what."""
    from fedmsg_notify.meta.engine import compute_meta

    message = decode_amqp(
        "org.fedoraproject.prod.mystery.thing",
        b'{"x": 1}',
        message_id="hdr-1",
        headers={
            "fedora_messaging_schema": "mystery.thing.v1",
            "fedora_messaging_user_hank": True,
            "fedora_messaging_rpm_python-bar": True,
            "fedora_messaging_user_ignored": False,
        },
        content_type="application/json",
        received=1.0,
    )
    meta = compute_meta(message)
    assert meta.source == "generic"
    assert "hank" in meta.usernames and "ignored" not in meta.usernames
    assert meta.packages == ("python-bar",)
