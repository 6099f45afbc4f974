"""Output injection: message content can never add lines, headers, markup or control codes to any part."""

from __future__ import annotations

import itertools
import os
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fedmsg_notify.backend import Backend, Destination
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.rules import Route, Rule
from fedmsg_notify.meta.engine import Meta
from fedmsg_notify.render import sanitize
from fedmsg_notify.render.renderer import Renderer
from hypothesis import given, settings
from hypothesis import strategies as st

_ids = itertools.count()
LINE_BREAKS = re.compile("[\r\n\v\f\t\x1c-\x1e\x85\u2028\u2029]")
# Every control character a template helper may legitimately emit (colour, bold, reset).
IRC_CODES = {"\x02", "\x03", "\x0f"}
# Text that stresses every class of character the sanitizer handles.
hostile_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\r\n\t\v\f\x00\x03\x02\x0f\x1b\x7f\x85\x9b\u2028\u2029\x1c\x1d\x1e\ud800\udfff :#,<>&\"'")),
        st.characters(codec="utf-8"),
    ),
    max_size=60,
)


class IrcLike(Backend):
    """An IRC-shaped backend: one line part."""

    name: ClassVar[str] = "irctest"
    parts: ClassVar[tuple[str, ...]] = ("line",)
    line_parts: ClassVar[frozenset[str]] = frozenset({"line"})


class MailLike(Backend):
    """An email-shaped backend: a one-line subject, a text part, an HTML part."""

    name: ClassVar[str] = "mailtest"
    parts: ClassVar[tuple[str, ...]] = ("subject", "text", "html")
    line_parts: ClassVar[frozenset[str]] = frozenset({"subject"})
    html_parts: ClassVar[frozenset[str]] = frozenset({"html"})


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    """Templates that print raw message content into every kind of part."""
    base: Path = tmp_path_factory.mktemp("templates")
    (base / "irctest").mkdir()
    (base / "irctest" / "default.j2").write_text(
        "{{ body.title | irc_color(service) }} {{ body.text }} {{ body.nested }}\n", encoding="utf-8"
    )
    (base / "mailtest").mkdir()
    (base / "mailtest" / "default.j2").write_text(
        "{% block subject %}Re: {{ body.text }}{% endblock %}\n"
        "{% block text %}\n{{ body.text }}\n\n-- \n{{ body.title }}\n{% endblock %}\n"
        "{% block html %}<p>{{ body.text }}</p>{% endblock %}\n",
        encoding="utf-8",
    )
    return Renderer([base])


def message(**body: Any) -> Message:
    # A fresh msg_id per message: the render cache must not hide what the templates do.
    return Message.from_envelope(
        {"topic": "org.fedoraproject.prod.irc.said", "msg": body, "timestamp": 1, "msg_id": f"x-{next(_ids)}"}
    )


def render(renderer: Renderer, backend: type[Backend], msg: Message) -> dict[str, str]:
    meta = Meta(title="t", subtitle="s", link=None, icon=None, agent=None, usernames=(), packages=())
    return renderer.render(backend, msg, meta, Route(Destination("acct", "#chan"), Rule("r", "f.yaml")))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("hi\r\nQUIT :bye", "hi QUIT :bye"),
        ("hi\nPRIVMSG #other :spam", "hi PRIVMSG #other :spam"),
        ("hi\rNICK x", "hi NICK x"),
        ("hi\u2028JOIN #x", "hi JOIN #x"),
        ("hi\x00\r\n\r\nQUIT", "hi QUIT"),
    ],
)
def test_irc_protocol_injection_stays_on_one_line(renderer: Renderer, text: str, shown: str) -> None:
    """A commit message could make the bot quit, join, or spam another channel."""
    line = render(renderer, IrcLike, message(title="T", text=text, nested=None))["line"]
    assert line == f"{sanitize.irc_color('T', 'irc')} {shown}"


def test_irc_colour_survives_but_content_codes_do_not(renderer: Renderer) -> None:
    """Either the title loses its colour, or a message could recolour, bold or hide text in the channel."""
    line = render(renderer, IrcLike, message(title="bodhi", text="\x0304red\x0f \x02bold\x1b[31m", nested=None))["line"]
    code = sanitize.irc_colour_code("irc")
    assert line == f"\x03{code}bodhi\x0f 04red bold[31m"


def test_mail_subject_cannot_add_headers(renderer: Renderer) -> None:
    """A message could add a Bcc: header or a forged body to mail."""
    out = render(renderer, MailLike, message(title="x", text="hello\r\nBcc: victim@example.org\r\n\r\nforged"))
    assert out["subject"] == "Re: hello Bcc: victim@example.org forged"
    assert out["text"] == "hello\nBcc: victim@example.org\n\nforged\n\n-- \nx"
    assert out["html"] == "<p>hello\nBcc: victim@example.org\n\nforged</p>"


@settings(max_examples=150, deadline=None)
@given(title=hostile_text, text=hostile_text, nested=st.lists(hostile_text, max_size=3))
def test_line_parts_never_carry_breaks_or_content_controls(
    renderer: Renderer, title: str, text: str, nested: list[str]
) -> None:
    """For any message content, an IRC line never splits and carries only the template's own colour codes."""
    line = render(renderer, IrcLike, message(title=title, text=text, nested=nested))["line"]
    assert not LINE_BREAKS.search(line)
    line.encode("utf-8")  # a lone surrogate from a JSON escape would crash the backend here
    assert {c for c in line if ord(c) < 32 or 0x7F <= ord(c) <= 0x9F} <= IRC_CODES


@settings(max_examples=150, deadline=None)
@given(text=hostile_text, title=hostile_text)
def test_mail_parts_never_carry_injection(renderer: Renderer, text: str, title: str) -> None:
    """For any message content, the subject is one line, no part has NUL or CR, and HTML has no raw markup."""
    out = render(renderer, MailLike, message(title=title, text=text))
    assert not LINE_BREAKS.search(out["subject"])
    for part in out.values():
        part.encode("utf-8")
        assert "\x00" not in part and "\r" not in part
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", part)
    inner = out["html"].removeprefix("<p>").removesuffix("</p>")
    assert "<" not in inner and ">" not in inner and '"' not in inner


@given(text=st.text())
def test_header_safe_is_one_clean_line(text: str) -> None:
    """An email header built from content could be split into two headers."""
    value = sanitize.header_safe(text)
    assert not LINE_BREAKS.search(value)
    assert not re.search("[\x00-\x1f\x7f-\x9f]", value)
    assert value == value.strip()


@given(text=st.text())
def test_plain_text_keeps_newlines_and_drops_controls(text: str) -> None:
    """Multi-line bodies would lose their lines, or keep terminal escapes and NULs."""
    value = sanitize.plain_text(text)
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", value)
    assert value.count("\n") == text.count("\n") + text.count("\r") - text.count("\r\n")
    assert sanitize.plain_text(value) == value


@given(text=hostile_text, service=st.text(max_size=10))
def test_strip_irc_formatting_undoes_irc_color(text: str, service: str) -> None:
    """Channels with mode +c would reject (or show garbage for) coloured lines."""
    coloured = sanitize.irc_color(text, service)
    assert sanitize.strip_irc_formatting(coloured) == sanitize.one_line(sanitize.plain_text(text))


def test_irc_color_is_stable_and_guards_leading_digits() -> None:
    """Service colours would change between restarts, or a title starting with a digit would change colour."""
    assert sanitize.irc_color("bodhi") == sanitize.irc_color("bodhi")
    assert sanitize.irc_colour_code("bodhi") == sanitize.irc_colour_code("bodhi")
    code = sanitize.irc_colour_code("koji")
    assert sanitize.irc_color("42 builds", "koji") == f"\x03{code}\x02\x0242 builds\x0f"
    assert sanitize.irc_color("", "koji") == ""


def test_strip_irc_formatting_handles_every_code() -> None:
    """Formatting from other bots relayed into a +c channel would leak through."""
    text = "\x02b\x02 \x034,12c\x03 \x04ff00ff,00ff00h\x04 \x1di\x1d \x1fu\x1f \x16r\x16 \x11m\x11 \x1es\x1e\x0f"
    assert sanitize.strip_irc_formatting(text) == "b c h i u r m s"


def test_finalize_keeps_trusted_and_markup_and_blanks_none() -> None:
    """Template output would print 'None', lose its colours, or escape HTML from macros twice."""
    from markupsafe import Markup

    assert sanitize.finalize(None) == ""
    assert sanitize.finalize("a\x1b[2Jb\x00") == "a[2Jb"
    assert sanitize.finalize(sanitize.irc_color("x", "s")).startswith("\x03")
    assert isinstance(sanitize.finalize(Markup("<b>x\x07</b>")), Markup)
    assert sanitize.finalize(Markup("<b>x\x07</b>")) == Markup("<b>x</b>")
    assert sanitize.finalize(3) == "3"
    assert "\x03" not in sanitize.finalize_html(sanitize.irc_color("x", "s"))


def test_finish_part_normalises_cr_and_nul() -> None:
    """A lone CR could reach an SMTP or IRC server from template literal text."""
    assert sanitize.finish_part("a\r\nb\rc\x00d\n", line=False) == "a\nb\ncd"
    assert sanitize.finish_part(" a\r\n\t b \u2029 c ", line=True) == "a b c"


def _registered_backends() -> list[type[Backend]]:
    from fedmsg_notify.backends import backend_class, backend_names

    found = []
    for name in backend_names():
        try:
            found.append(backend_class(name))
        except ImportError as exc:
            # An optional backend whose library is missing: allowed on a developer's machine,
            # a failure in CI, where every extra is installed.
            if os.environ.get("CI"):
                raise AssertionError(f"backend {name!r} cannot load in CI: {exc}") from exc
            warnings.warn(f"backend {name!r} not checked: {exc}", stacklevel=2)
    return found


@pytest.fixture(scope="module")
def shipped() -> Renderer:
    """The shipped templates only, as a fresh install renders them."""
    return Renderer([])


@settings(max_examples=60, deadline=None)
@given(title=hostile_text, subtitle=hostile_text, link=hostile_text, comment=hostile_text)
def test_every_backend_with_shipped_templates_is_injection_proof(
    shipped: Renderer, title: str, subtitle: str, link: str, comment: str
) -> None:
    """Some backend's shipped template could pass a CR/LF, NUL or raw markup from a message to its server."""
    msg = Message.from_envelope(
        {
            "topic": "org.fedoraproject.prod.bodhi.update.comment",
            "msg": {"comment": {"text": f"<evil-tag>{comment}", "user": {"name": title}}, "agent": subtitle},
            "timestamp": 1,
            "msg_id": f"x-{next(_ids)}",
        }
    )
    title, subtitle = f"<evil-tag>{title}", f"{subtitle}<evil-tag>"
    meta = Meta(title=title, subtitle=subtitle, link=link, icon=None, agent=subtitle, usernames=(), packages=())
    route = Route(Destination("acct", "#chan"), Rule("r", "f.yaml"))
    assert {b.name for b in _registered_backends()} >= {"console", "irc", "email"}
    for backend in _registered_backends():
        out = shipped.render(backend, msg, meta, route)
        assert set(out) == set(backend.parts)
        for part, text in out.items():
            text.encode("utf-8")
            assert "\x00" not in text and "\r" not in text, (backend.name, part)
            if part in backend.line_parts:
                assert not LINE_BREAKS.search(text), (backend.name, part)
            if part in backend.html_parts:
                assert "<evil-tag>" not in text, (backend.name, part)


def test_finish_parts_cleans_summaries_built_outside_templates() -> None:
    """A flood summary naming a hostile topic's service could inject an IRC command."""
    parts = {"line": "3 more (bo\r\nQUIT :x: 3)\x00", "body": "a\x1b[2J\r\nb", "html": "<b>x</b>\r"}
    assert sanitize.finish_parts(parts, line_parts={"line"}, html_parts={"html"}) == {
        "line": "3 more (bo QUIT :x: 3)",
        "body": "a[2J\nb",
        "html": "<b>x</b>",
    }
