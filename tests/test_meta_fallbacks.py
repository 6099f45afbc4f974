"""Typed slots fail closed: a value of the wrong shape makes a field fall back, counted, never printed."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.envelope import Message, build_envelope
from fedmsg_notify.meta.engine import MetaEngine

WIDGETS = """
service: widgets
home: https://widgets.example.org/
staging: {widgets.example.org: widgets.stg.example.org}
defaults:
  agent: body.agent
  link: '"https://widgets.example.org/w/" ~ body.widget.id'
  subtitle: 'agent ~ " touched widget " ~ body.widget.id'
topics:
  widget.rename:
    link: '"https://widgets.example.org/w/" ~ body.widget.name ~ "?by=" ~ agent'
    subtitle: 'agent ~ " renamed the widget to " ~ body.widget.name'
  widget.tag:
    subtitle: >-
      agent ~ " tagged the widget" ~ (" " ~ (body.tags | join(", ")) if body.tags else "")
  widget.dump:
    subtitle: 'agent ~ " dumped " ~ (body.widget | string)'
  widget.people:
    usernames: '["Jane Doe", "http://ralph.id.fedoraproject.org/", "kevin", "jane@example.org"]'
    packages: '["rpms/foo", "guake", "two words", "libstdc++"]'
"""


def make(topic: str, body: Any) -> Message:
    return Message.from_envelope(build_envelope(topic, body, i=1, username="tester"))


@pytest.fixture
def engine(tmp_path: Path) -> MetaEngine:
    (tmp_path / "widgets.yaml").write_text(textwrap.dedent(WIDGETS).lstrip(), encoding="utf-8")
    return MetaEngine([tmp_path])


def rename(**widget: Any) -> Message:
    return make("org.fedoraproject.prod.widgets.widget.rename", {"agent": "ralph", "widget": widget})


def test_a_good_message_uses_the_topic_expressions(engine: MetaEngine) -> None:
    meta = engine.compute(rename(name="gizmo", id=3))
    assert meta.subtitle == "ralph renamed the widget to gizmo"
    assert meta.link == "https://widgets.example.org/w/gizmo?by=ralph"
    assert engine.fallback_counts() == {}


@pytest.mark.parametrize("name", [{"username": "ralph"}, ["a", "b"], None, "", "   "])
def test_a_mapping_list_none_or_empty_slot_falls_back_to_the_service_default(engine: MetaEngine, name: Any) -> None:
    """`renamed the widget to {'username': 'ralph'}` is never printed: the service's default sentence is."""
    meta = engine.compute(rename(name=name, id=3))
    assert meta.subtitle == "ralph touched widget 3"
    assert meta.link == "https://widgets.example.org/w/3"
    assert engine.fallback_counts() == {"widgets": {"link": 1, "subtitle": 1}}


def test_when_the_default_fails_too_the_generic_sentence_and_the_home_page_are_used(engine: MetaEngine) -> None:
    meta = engine.compute(make("org.fedoraproject.prod.widgets.widget.rename", {"agent": "ralph", "widget": {}}))
    assert meta.subtitle == "ralph renamed widgets widget"
    assert meta.link == "https://widgets.example.org/"


def test_a_body_link_comes_before_the_home_page(engine: MetaEngine) -> None:
    body = {"agent": "ralph", "widget": {"id": {"x": 1}}, "url": "https://elsewhere.example.org/w"}
    meta = engine.compute(make("org.fedoraproject.prod.widgets.widget.rename", body))
    assert meta.link == "https://elsewhere.example.org/w"


def test_url_slots_are_percent_encoded_for_their_place(engine: MetaEngine) -> None:
    """A space-separated title in a path and an `&` in a query value still make one working link."""
    meta = engine.compute(
        make("org.fedoraproject.prod.widgets.widget.rename", {"agent": "a&b", "widget": {"name": "foo-1 bar-2/x?"}})
    )
    assert meta.link == "https://widgets.example.org/w/foo-1%20bar-2/x%3F?by=a%26b"


def test_an_empty_conditional_part_is_the_authors_choice_but_a_list_of_mappings_is_not_text(
    engine: MetaEngine,
) -> None:
    tagged = "org.fedoraproject.prod.widgets.widget.tag"
    assert engine.compute(make(tagged, {"agent": "ralph"})).subtitle == "ralph tagged the widget"
    assert (
        engine.compute(make(tagged, {"agent": "ralph", "tags": ["a", "b"]})).subtitle == "ralph tagged the widget a, b"
    )
    assert (
        engine.compute(make(tagged, {"agent": "ralph", "tags": [{"x": 1}]})).subtitle == "ralph tagged widgets widget"
    )


def test_string_of_a_mapping_is_refused_rather_than_printed(engine: MetaEngine) -> None:
    dump = "org.fedoraproject.prod.widgets.widget.dump"
    assert engine.compute(make(dump, {"agent": "ralph", "widget": {"id": 1}})).subtitle == "ralph touched widget 1"


def test_staging_messages_link_to_the_staging_host(engine: MetaEngine) -> None:
    """A `stg` message links where the staging service lives, a prod message to production."""
    stg = make("org.fedoraproject.stg.widgets.widget.rename", {"agent": "ralph", "widget": {"name": "g", "id": 1}})
    assert engine.compute(stg).link == "https://widgets.stg.example.org/w/g?by=ralph"
    assert engine.compute(rename(name="g", id=1)).link == "https://widgets.example.org/w/g?by=ralph"


def test_a_home_page_that_is_not_a_url_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("service: bad\nhome: widgets.example.org\n", encoding="utf-8")
    problems = [str(p) for p in MetaEngine([tmp_path], strict=False).check()]
    assert problems == [f"{path}:2:7: home: must be an absolute http(s) URL"]


def test_only_chains_that_start_with_a_url_are_encoded() -> None:
    """A sentence that mentions `rpms/foo` keeps its spaces; the link built beside it is encoded."""
    meta = MetaEngine().compute(
        make(
            "org.fedoraproject.prod.git.receive",
            {
                "commit": {
                    "repo": "guake",
                    "branch": "f40",
                    "rev": "abc",
                    "summary": "Fix the build",
                    "username": "ralph",
                }
            },
        )
    )
    assert meta.subtitle == "ralph pushed to rpms/guake (f40): Fix the build"
    assert meta.link == "https://src.fedoraproject.org/rpms/guake/c/abc?branch=f40"


def test_a_mapping_where_a_list_of_names_belongs_gives_no_names() -> None:
    """`{"username": "ralph"}` in place of a package list is neither two packages nor "username and name"."""
    meta = MetaEngine().compute(
        make(
            "org.fedoraproject.prod.git.pkgdb2branch.complete",
            {"agent": "limburgher", "branchedPackages": [], "unbranchedPackages": {"username": "ralph", "name": "x"}},
        )
    )
    assert meta.packages == ()
    assert "username" not in meta.subtitle and "{" not in meta.subtitle


def test_people_and_packages_are_names_whatever_an_expression_returns(engine: MetaEngine) -> None:
    """A display name, an e-mail or a path where a username or package belongs is dropped; an OpenID becomes a name."""
    meta = engine.compute(make("org.fedoraproject.prod.widgets.widget.people", {"agent": "kevin"}))
    assert meta.usernames == ("kevin", "ralph")
    assert meta.packages == ("guake", "libstdc++")
