"""Templates: SPEC resolution order, parts and blocks, autoescaping, caching, fallbacks, sandbox, check."""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fedmsg_notify.backend import Backend, Destination
from fedmsg_notify.backends.console import ConsoleBackend
from fedmsg_notify.bus.envelope import Message, split_topic
from fedmsg_notify.matching.rules import Route, Rule
from fedmsg_notify.meta.engine import Meta
from fedmsg_notify.render.renderer import Renderer, ago, candidates

LOGGER = "fedmsg_notify.render.renderer"
_ids = itertools.count()


class MailLike(Backend):
    """A multi-part backend like email, with no shipped templates (so fallbacks are the built-in ones)."""

    name: ClassVar[str] = "mailtest"
    parts: ClassVar[tuple[str, ...]] = ("subject", "text", "html")
    line_parts: ClassVar[frozenset[str]] = frozenset({"subject"})
    html_parts: ClassVar[frozenset[str]] = frozenset({"html"})


class LineOnly(Backend):
    """A single-part backend with no shipped templates."""

    name: ClassVar[str] = "linetest"
    parts: ClassVar[tuple[str, ...]] = ("line",)
    line_parts: ClassVar[frozenset[str]] = frozenset({"line"})


def message(topic: str = "org.fedoraproject.prod.bodhi.update.request.stable", **body: Any) -> Message:
    return Message.from_envelope(
        {"topic": topic, "msg": body or {"agent": "ralph"}, "timestamp": 1344350200, "msg_id": f"2012-{next(_ids)}"}
    )


def route(template: str | None = None, account: str = "acct", to: str | None = None, rule: str = "r") -> Route:
    return Route(Destination(account, to), Rule(rule, "rules/mine.yaml"), template=template)


def write(base: Path, name: str, text: str) -> Path:
    path = base / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def compute_meta(msg: Message) -> Meta:
    """Fixed metadata, so these tests do not depend on the per-service knowledge in meta.py."""
    agent = msg.body.get("agent") if isinstance(msg.body, dict) else None
    return Meta(
        title=f"{msg.service}.title",
        subtitle=f"{agent} did something",
        link="https://example.org/x",
        icon=None,
        agent=agent,
        usernames=(agent,) if agent else (),
        packages=(),
    )


def render(renderer: Renderer, backend: type[Backend], msg: Message, dest: Route | None = None) -> dict[str, str]:
    return renderer.render(backend, msg, compute_meta(msg), dest or route())


@pytest.fixture
def sample_message(samples: list[dict[str, Any]]) -> Message:
    """A real bodhi message from the bundled samples (subtopic bodhi.update.comment)."""
    envelope = next(s["message"] for s in samples if s["id"] == "bodhi.TestBodhi4Comment")
    return Message.from_envelope(envelope)


def test_candidates_follow_spec_order() -> None:
    """A user's per-topic template would be skipped if the lookup order differed from SPEC."""
    assert candidates("irc", "bodhi.update.comment", "mine.j2") == [
        "mine.j2",
        "irc/bodhi.update.comment.j2",
        "irc/bodhi.update.j2",
        "irc/bodhi.j2",
        "irc/default.j2",
    ]


def test_resolution_most_specific_wins_and_user_dir_beats_shipped(tmp_path: Path, sample_message: Message) -> None:
    """A user's more specific template (or their own default) would be ignored."""
    assert render(Renderer([tmp_path]), ConsoleBackend, sample_message)["line"] != "user default"
    steps = [
        ("console/default.j2", "user default"),
        ("console/bodhi.j2", "s"),
        ("console/bodhi.update.j2", "s.o"),
        ("console/bodhi.update.comment.j2", "s.o.e"),
    ]
    for name, text in steps:
        write(tmp_path, name, text)
        # A new renderer per step: resolutions are cached for the renderer's lifetime (reload = new Renderer).
        assert render(Renderer([tmp_path]), ConsoleBackend, sample_message) == {"line": text}


def test_explicit_template_wins_and_first_user_dir_first(tmp_path: Path, sample_message: Message) -> None:
    """A destination's `template:` or the first configured directory would lose to a default."""
    first, second = tmp_path / "a", tmp_path / "b"
    write(first, "console/bodhi.j2", "first dir")
    write(second, "console/bodhi.j2", "second dir")
    write(second, "short.j2", "explicit {{ service }}")
    renderer = Renderer([first, second])
    assert render(renderer, ConsoleBackend, sample_message) == {"line": "first dir"}
    assert render(renderer, ConsoleBackend, sample_message, route("short.j2")) == {"line": "explicit bodhi"}


def test_missing_explicit_template_falls_back_with_a_warning(
    tmp_path: Path, sample_message: Message, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in a destination's template name would silently deliver something else, or nothing."""
    write(tmp_path, "console/default.j2", "default")
    with caplog.at_level(logging.WARNING, LOGGER):
        out = render(Renderer([tmp_path]), ConsoleBackend, sample_message, route("nope.j2"))
    assert out == {"line": "default"}
    assert "template 'nope.j2' not found" in caplog.text


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../../../etc/passwd", "console/../../../etc/hostname"])
def test_explicit_template_cannot_name_host_files(tmp_path: Path, sample_message: Message, name: str) -> None:
    """A rule file's `template:` could make the daemon send a host file to a channel."""
    write(tmp_path, "console/default.j2", "default")
    renderer = Renderer([tmp_path / "console"])
    assert not renderer.exists(name)
    assert render(Renderer([tmp_path]), ConsoleBackend, sample_message, route(name)) == {"line": "default"}


def test_hostile_topics_resolve_cheaply_to_the_default(tmp_path: Path) -> None:
    """A 10,000-part topic or a NUL in a topic could stall or crash rendering with file lookups."""
    write(tmp_path, "console/default.j2", "default")
    renderer = Renderer([tmp_path])
    assert len(candidates("console", ".".join(["x"] * 10_000))) == 9
    for topic in ("a.prod." + ".".join(["x"] * 10_000), "a.prod.b\x00c.d", "a.prod." + "y" * 5000):
        # The decoder refuses such topics; built directly, they test the renderer's own guard.
        envelope = {"topic": topic, "msg": {"agent": "ralph"}, "timestamp": 1344350200, "msg_id": f"2012-{next(_ids)}"}
        hostile = Message(topic=topic, envelope=envelope, parts=split_topic(topic), msg_id=envelope["msg_id"])
        assert render(renderer, ConsoleBackend, hostile) == {"line": "default"}


def test_resolution_is_cached_per_backend_and_subtopic(tmp_path: Path) -> None:
    """Every message would walk the template directories again (a stat storm under load)."""
    renderer = Renderer([tmp_path])
    for _ in range(5):
        render(renderer, ConsoleBackend, message())
    render(renderer, ConsoleBackend, message("org.fedoraproject.prod.buildsys.build.state.change"))
    assert renderer.stats["resolutions"] == 2


def test_context_has_message_body_topic_meta_rule_destination(tmp_path: Path, sample_message: Message) -> None:
    """Templates written against the documented context would fail with undefined names."""
    write(
        tmp_path,
        "console/default.j2",
        "{{ topic }}|{{ service }}|{{ body.agent }}|{{ message.msg_id }}|{{ meta.title }}|"
        "{{ rule.name }}@{{ rule.file }}|{{ destination.account }}>{{ destination.to }}",
    )
    meta = compute_meta(sample_message)
    out = Renderer([tmp_path]).render(ConsoleBackend, sample_message, meta, route(to="#chan"))
    assert out["line"] == (
        f"{sample_message.topic}|bodhi|{sample_message.body['agent']}|{sample_message.msg_id}|{meta.title}|"
        "r@rules/mine.yaml|acct>#chan"
    )


def test_json_fields_named_like_dict_methods_are_fields(tmp_path: Path) -> None:
    """Bodhi templates reading `body.update.title` would hit dict.update and fail in the sandbox."""
    write(tmp_path, "linetest/default.j2", "{{ body.update.title }} {{ body.items | length }} {{ body.keys() | list }}")
    msg = message(update={"title": "fedmsg-1.0"}, items=[1, 2])
    assert render(Renderer([tmp_path]), LineOnly, msg) == {"line": "fedmsg-1.0 2 ['update', 'items']"}


def test_multi_part_blocks_each_part_with_html_escaped_and_text_not(tmp_path: Path) -> None:
    """A mail would have the wrong subject/body, or its HTML part would carry the sender's markup."""
    write(
        tmp_path,
        "mailtest/default.j2",
        "ignored outside blocks\n"
        "{% block subject %}[{{ service }}] {{ body.comment }}{% endblock %}\n"
        "{% block text %}\nComment:\n{{ body.comment }}\n{% endblock %}\n"
        "{% block html %}<p>{{ body.comment }}</p><p>{{ body.comment | safe }}</p>{% endblock %}\n",
    )
    msg = message(comment="<b>hi</b> & bye\nsecond line")
    out = render(Renderer([tmp_path]), MailLike, msg)
    assert out["subject"] == "[bodhi] <b>hi</b> & bye second line"
    assert out["text"] == "Comment:\n<b>hi</b> & bye\nsecond line"
    escaped = "&lt;b&gt;hi&lt;/b&gt; &amp; bye\nsecond line"
    assert out["html"] == f"<p>{escaped}</p><p>{escaped}</p>"


def test_missing_block_renders_empty(tmp_path: Path) -> None:
    """A template without an html block would crash delivery instead of sending an empty part."""
    write(tmp_path, "mailtest/default.j2", "{% block subject %}s{% endblock %}{% block text %}t{% endblock %}")
    renderer = Renderer([tmp_path])
    assert render(renderer, MailLike, message()) == {"subject": "s", "text": "t", "html": ""}


def test_block_inheritance_with_super(tmp_path: Path) -> None:
    """A user template extending a base and overriding one block would lose the inherited parts."""
    write(
        tmp_path,
        "mailtest/base.j2",
        "{% block subject %}base subject{% endblock %}{% block text %}base text {{ service }}{% endblock %}"
        "{% block html %}<i>{{ body.agent }}</i>{% endblock %}",
    )
    write(
        tmp_path,
        "mailtest/bodhi.j2",
        '{% extends "mailtest/base.j2" %}{% block subject %}[x] {{ super() }}{% endblock %}',
    )
    out = render(Renderer([tmp_path]), MailLike, message(agent="<ralph>"))
    assert out == {"subject": "[x] base subject", "text": "base text bodhi", "html": "<i>&lt;ralph&gt;</i>"}


def test_autoescape_cannot_be_switched_off_in_html_parts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A template author could let message content inject markup into HTML mail."""
    write(
        tmp_path,
        "mailtest/default.j2",
        "{% block subject %}s{% endblock %}{% block text %}t{% endblock %}"
        "{% block html %}{% autoescape false %}{{ body.agent }}{% endautoescape %}{% endblock %}",
    )
    msg = message(agent="<script>x</script>")
    with caplog.at_level(logging.WARNING, LOGGER):
        out = render(Renderer([tmp_path]), MailLike, msg)
    assert "<script>" not in out["html"]
    assert "'autoescape' is not allowed" in caplog.text


def test_shared_template_renders_once_for_many_destinations(tmp_path: Path, sample_message: Message) -> None:
    """A message routed to 1,000 channels would be rendered 1,000 times."""
    write(tmp_path, "console/default.j2", "{{ meta.title }}")
    renderer = Renderer([tmp_path])
    outputs = [render(renderer, ConsoleBackend, sample_message, route(to=f"#c{n}", rule=f"r{n}")) for n in range(50)]
    assert renderer.stats["renders"] == 1
    assert renderer.stats["cache_hits"] == 49
    assert all(out == outputs[0] for out in outputs)


def test_template_reading_the_destination_renders_per_destination(tmp_path: Path, sample_message: Message) -> None:
    """A template addressing its recipient would send every recipient the first one's text."""
    write(tmp_path, "console/default.j2", '{% include "console/greeting.j2" %}')
    write(tmp_path, "console/greeting.j2", "hello {{ destination.to }}")
    renderer = Renderer([tmp_path])
    outs = [render(renderer, ConsoleBackend, sample_message, route(to=to))["line"] for to in ("#a", "#b", "#a")]
    assert outs == ["hello #a", "hello #b", "hello #a"]
    assert renderer.stats["renders"] == 2


def test_broken_template_falls_back_to_shipped_default_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One typo in a user template would stop deliveries or flood the log."""
    bad = write(tmp_path, "console/default.j2", "line one\n{{ meta.title }\n")
    renderer = Renderer([tmp_path])
    shipped = Renderer([])
    with caplog.at_level(logging.WARNING, LOGGER):
        for _ in range(3):
            msg = message()
            assert render(renderer, ConsoleBackend, msg) == render(shipped, ConsoleBackend, msg)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert f"{bad}:2" in warnings[0] and "org.fedoraproject.prod.bodhi.update.request.stable" in warnings[0]


def test_runtime_error_falls_back_with_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A template reading a field some messages lack would drop those messages silently."""
    bad = write(tmp_path, "console/bodhi.j2", "ok\n{{ body.update.title }}\n")
    renderer = Renderer([tmp_path])
    msg = message()
    with caplog.at_level(logging.WARNING, LOGGER):
        out = render(renderer, ConsoleBackend, msg)
    assert out == render(Renderer([]), ConsoleBackend, msg)
    assert f"{bad}:2" in caplog.text and "UndefinedError" in caplog.text


def test_everything_broken_falls_back_to_plain_sentence(tmp_path: Path) -> None:
    """A backend without a working template would deliver nothing at all."""
    write(tmp_path, "mailtest/default.j2", "{% block subject %}{{ nope }}{% endblock %}")
    msg = message(agent="ralph")
    meta = compute_meta(msg)
    out = Renderer([tmp_path]).render(MailLike, msg, meta, route())
    sentence = f"{meta.title}: {meta.subtitle}" + (f" {meta.link}" if meta.link else "")
    assert out["subject"] == sentence and out["text"] == sentence


def test_plain_sentence_fallback_escapes_html_and_folds_lines(tmp_path: Path) -> None:
    """The last-resort text would let metadata inject markup or header lines."""
    meta = Meta(title="<t>", subtitle="a\r\nBcc: x", link=None, icon=None, agent=None, usernames=(), packages=())
    out = Renderer([tmp_path]).render(MailLike, message(), meta, route())
    assert out == {"subject": "<t>: a Bcc: x", "text": "<t>: a\nBcc: x", "html": "&lt;t&gt;: a\nBcc: x"}


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ body['__class__'] }}",
    "{{ self._TemplateReference__context }}",
    "{% include '/etc/passwd' %}",
    "{% include '../../../../etc/passwd' %}",
    "{% import 'os' as os %}{{ os.system('id') }}",
    "{{ body.update({'x': 1}) }}",
    "{{ 'x' * 10**9 }}",
    "{{ 10 ** 100000000 }}",
    "{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{{ '{0.__class__}'.format(body) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ lipsum(10000000) }}",
]


@pytest.mark.parametrize("source", SANDBOX_ESCAPES)
def test_sandbox_escapes_fail_safely_and_are_reported(
    tmp_path: Path, source: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A template could read host files, run commands or exhaust memory inside the daemon."""
    write(tmp_path, "console/default.j2", "PWNED " + source)
    msg = message()
    with caplog.at_level(logging.WARNING, LOGGER):
        out = render(Renderer([tmp_path]), ConsoleBackend, msg)
    assert out == render(Renderer([]), ConsoleBackend, msg)
    assert "console/default.j2" in caplog.text
    assert "root:" not in out["line"] and "uid=" not in out["line"]


def test_ago_helper() -> None:
    """Templates saying how long ago something happened would print nonsense."""
    assert ago(1000, now=1000 + 3 * 3600 + 5) == "3 hours ago"
    assert ago(1000, now=1030) == "just now"
    assert ago("x") == ""


def test_helpers_available_in_templates(tmp_path: Path) -> None:
    """Templates using the documented helpers would fail to render."""
    write(
        tmp_path,
        "linetest/default.j2",
        "{{ message.timestamp | isotime }} {{ ago(0) }} {{ 'abcdefghijklmnop' | truncate(8, true, '') }}",
    )
    out = render(Renderer([tmp_path]), LineOnly, message())
    assert out["line"].startswith("2012-08-07 14:36 UTC ") and out["line"].endswith("ago abcdefgh")


def test_none_prints_as_nothing(tmp_path: Path) -> None:
    """A message without a link would show the word 'None' to users."""
    write(tmp_path, "linetest/default.j2", "[{{ body.link }}]")
    assert render(Renderer([tmp_path]), LineOnly, message(link=None)) == {"line": "[]"}


# -- digests ---------------------------------------------------------------------------


def entries(n: int) -> list[dict[str, Any]]:
    out = []
    for k in range(n):
        msg = message(agent=f"user{k}")
        meta = compute_meta(msg).as_dict()
        out.append({"message": msg.envelope, "topic": msg.topic, "meta": meta, "rendered": {"line": f"r{k}"}})
    return out


def test_digest_uses_digest_template_with_true_count(tmp_path: Path) -> None:
    """A capped digest would under-report how many messages it stands for."""
    write(
        tmp_path,
        "mailtest/digest.j2",
        "{% block subject %}{{ count }} updates{% endblock %}"
        "{% block text %}{% for e in messages %}{{ e.message.msg.agent }}\n{% endfor %}{% endblock %}"
        "{% block html %}{% for e in messages %}<li>{{ e.rendered.line }}</li>{% endfor %}{% endblock %}",
    )
    out = Renderer([tmp_path]).render_digest(MailLike, entries(3), route(), total=7)
    assert out == {"subject": "7 updates", "text": "user0\nuser1\nuser2", "html": "<li>r0</li><li>r1</li><li>r2</li>"}


def test_one_message_digest_reads_like_a_normal_delivery(tmp_path: Path) -> None:
    """A digest of one message would arrive as '1 messages' instead of the message itself."""
    write(tmp_path, "console/default.j2", "single {{ body.agent }}")
    write(tmp_path, "console/digest.j2", "digest")
    out = Renderer([tmp_path]).render_digest(ConsoleBackend, entries(1), route(), total=1)
    assert out == {"line": "single user0"}


def test_shipped_console_digest_is_one_line(tmp_path: Path) -> None:
    """The console digest would print a ragged multi-line block or omit the remainder count."""
    data = entries(2)
    out = Renderer([]).render_digest(ConsoleBackend, data, route(), total=5)
    titles = [e["meta"]["title"] for e in data]
    assert out["line"].startswith(f"5 messages: {titles[0]}: ")
    assert out["line"].endswith("... and 3 more") and "\n" not in out["line"]


def test_broken_digest_falls_back_to_built_in(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broken digest template would lose a whole batch of notifications."""
    write(tmp_path, "mailtest/digest.j2", "{% block subject %}{{ messages[0].nope }}{% endblock %}")
    data = entries(2)
    with caplog.at_level(logging.WARNING, LOGGER):
        out = Renderer([tmp_path]).render_digest(MailLike, data, route(), total=2)
    assert out["subject"].startswith("2 messages: ")
    assert out["text"].count("\n") == 1
    assert out["html"].startswith("<ul>\n<li>")
    assert "mailtest/digest.j2:1" in caplog.text


# -- check -----------------------------------------------------------------------------


def test_check_reports_every_problem_with_position(tmp_path: Path) -> None:
    """A user could not find which template line is wrong, or would learn only of the first problem."""
    write(tmp_path, "console/good.j2", "{{ meta.title }} {% include 'console/default.j2' %}")
    write(tmp_path, "console/syntax.j2", "ok\n\n{% if meta.title %}unclosed\n")
    write(tmp_path, "console/escape.j2", "{{ ''.__class__.__mro__ }}\n{{ cycler.__init__.__globals__ }}")
    write(tmp_path, "console/files.j2", "{% include '/etc/passwd' %}\n{% import 'os' as os %}")
    write(tmp_path, "console/typo.j2", "{{ mesage.topic }}")
    write(tmp_path, "console/filter.j2", "x\n{{ topic | nosuchfilter }}")
    write(tmp_path, "mailtest/default.j2", "{% block subject %}s{% endblock %}")
    renderer = Renderer([tmp_path])
    got = sorted(str(p).replace(f"{tmp_path}/", "") for p in renderer.check() if str(tmp_path) in str(p))
    dirs = renderer._dirs()
    assert got == sorted(
        [
            "console/syntax.j2:3:1: Unexpected end of template. Jinja was looking for the following tags: "
            "'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'.",
            "console/escape.j2:1:1: '__class__' is not allowed: templates cannot reach Python internals",
            "console/escape.j2:1:1: '__mro__' is not allowed: templates cannot reach Python internals",
            "console/escape.j2:2:1: '__init__' is not allowed: templates cannot reach Python internals",
            "console/escape.j2:2:1: '__globals__' is not allowed: templates cannot reach Python internals",
            f"console/files.j2:1:1: include '/etc/passwd': no such template in {dirs}",
            f"console/files.j2:2:1: import 'os': no such template in {dirs}",
            "console/typo.j2:1:1: unknown variable 'mesage' (did you mean 'message'?)",
            "console/filter.j2:2:1: No filter named 'nosuchfilter'.",
        ]
    )


def test_check_flags_missing_blocks_of_a_known_multi_part_backend(tmp_path: Path) -> None:
    """An email template without an HTML block would silently send an empty HTML part."""
    write(tmp_path, "email/default.j2", "{% block subject %}s{% endblock %}{% block text %}t{% endblock %}")
    write(tmp_path, "email/bad.j2", "{% block html %}{% autoescape false %}x{% endautoescape %}{% endblock %}")
    renderer = Renderer([tmp_path])
    got = [str(p).replace(f"{tmp_path}/", "") for p in renderer.check() if str(tmp_path) in str(p)]
    from fedmsg_notify.backends import backend_class

    email = backend_class("email")  # built in, standard library only: never missing
    missing = [part for part in email.parts if part not in ("subject", "text")]
    assert got == [
        "email/bad.j2:1:1: 'autoescape' is not allowed: HTML parts are always autoescaped",
        *(
            f"email/default.j2:1:1: no {{% block {part} %}}: email renders {', '.join(email.parts)}; "
            f"its {part} would be empty"
            for part in missing
        ),
    ]


def test_shipped_templates_pass_check() -> None:
    """A shipped default template would be broken for every user."""
    assert [str(p) for p in Renderer([]).check()] == []


def test_every_sample_renders_through_every_shipped_template(samples: list[dict[str, Any]]) -> None:
    """Some real message would hit a broken shipped template and arrive as the bare fallback sentence."""
    from fedmsg_notify.backends import backend_class, backend_names
    from fedmsg_notify.meta.engine import compute_meta as real_meta

    renderer = Renderer([])
    backends = []
    for name in backend_names():
        try:
            backends.append(backend_class(name))
        except ImportError as exc:
            # A missing optional library is allowed on a developer's machine, never in CI.
            if os.environ.get("CI"):
                raise AssertionError(f"backend {name!r} cannot load in CI: {exc}") from exc
            warnings.warn(f"backend {name!r} not rendered: {exc}", stacklevel=2)
    assert {b.name for b in backends} >= {"console", "irc", "email"}
    for sample in samples:
        msg = Message.from_envelope({"timestamp": 1344350200, **sample["message"]})
        meta = real_meta(msg)
        for backend in backends:
            out = renderer.render(backend, msg, meta, route())
            assert renderer.stats["failures"] == 0, (sample["id"], backend.name)
            assert all(out[part] for part in backend.line_parts), (sample["id"], backend.name, out)
