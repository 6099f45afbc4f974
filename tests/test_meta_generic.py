"""Services no file describes still say who did what to which package, with a working link."""

from __future__ import annotations

from typing import Any

import pytest
from fedmsg_notify.bus.envelope import Message, build_envelope
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.meta.generic import generic_link, generic_packages, generic_subtitle, generic_usernames
from fedmsg_notify.meta.quality import sentence_problem


def make(topic: str, body: Any) -> Message:
    return Message.from_envelope(build_envelope(topic, body, i=1, username="tester"))


@pytest.fixture(scope="module")
def engine() -> MetaEngine:
    return MetaEngine()


def test_an_unknown_service_reads_agent_verb_object(engine: MetaEngine) -> None:
    """`ralph edited hackerspace stack hacking`: the actor, the topic's event, its object and the object's name."""
    meta = engine.compute(
        make("org.fedoraproject.prod.hackerspace.stack.edit", {"agent": "ralph", "stack": {"name": "hacking"}})
    )
    assert meta.subtitle == "ralph edited hackerspace stack hacking"
    assert meta.agent == "ralph" and meta.usernames == ("ralph",)
    assert meta.source == "generic"


def test_people_come_from_every_person_key_as_names_or_objects(engine: MetaEngine) -> None:
    """agent/user/owner/submitter/author, as strings, OpenIDs or objects with name/username, all count."""
    body = {
        "agent": {"username": "ralph"},
        "owner": "pingou",
        "review": {"submitter": {"name": "kevin"}, "author": "http://adamw.id.fedoraproject.org/"},
        "user": ["nirik", {"name": "mattdm"}],
        "title": "Fix the build",
    }
    meta = engine.compute(make("org.fedoraproject.prod.gizmo.review.new", body))
    assert meta.agent == "ralph"
    assert meta.usernames == ("adamw", "kevin", "mattdm", "nirik", "pingou", "ralph")
    assert meta.subtitle == 'ralph created gizmo review "Fix the build"'


def test_people_are_never_made_from_reprs_or_foreign_addresses() -> None:
    """A dict without a name, an e-mail outside fedoraproject.org or a display name with a space is nobody."""
    body = {"agent": {"id": 3}, "user": "Jane Doe", "owner": "jane@example.com", "author": "{'name': 'x'}"}
    assert generic_usernames(body) == ()


@pytest.mark.parametrize(
    ("body", "packages"),
    [
        ({"package": "guake"}, ("guake",)),
        ({"package": {"name": "guake"}}, ("guake",)),
        ({"packages": ["python-a", {"name": "python-b"}, {"package_name": "python-c"}]}, ("python-a", "python-b", "python-c")),
        ({"build": {"nvr": "foo-1.0-1.fc30"}}, ("foo",)),
        ({"nvr": "kernel-5.0.1-300.fc30"}, ("kernel",)),
        ({"nvrs": ["bar-2-1.fc30", "baz-3-1.el8"]}, ("bar", "baz")),
        ({"rpm": "qux-1.2-3.fc31.x86_64.rpm"}, ("qux",)),
        ({"artifact": {"name": "python-d", "version": "1", "release": "2.fc30"}}, ("python-d",)),
        ({"name": "rawhide"}, ()),  # a name with no version beside it is not a package
        ({"package": {"id": 7}}, ()),
        ({"packages": "not-a-list but text with spaces"}, ()),
    ],
)  # fmt: skip
def test_packages_come_from_package_keys_and_parsed_nvrs(body: dict[str, Any], packages: tuple[str, ...]) -> None:
    """package(s), name-next-to-nvr, build.nvr, nvr(s) and rpm file names give package names."""
    assert generic_packages(body) == packages


def test_unknown_service_packages_reach_the_metadata(engine: MetaEngine) -> None:
    """Package rules can match messages of a service nobody described (e.g. a repo listing changed packages)."""
    body = {"name": "f40-updates", "packages": ["python-requests", "guake"], "url": "https://example.org/repo/"}
    meta = engine.compute(make("org.fedoraproject.prod.repowatch.repo.update", body))
    assert meta.packages == ("guake", "python-requests")
    assert meta.link == "https://example.org/repo/"
    assert meta.subtitle == "repowatch repo f40-updates was updated"


@pytest.mark.parametrize(
    ("body", "link"),
    [
        ({"html_url": "https://github.com/fedora-infra/x/pull/1"}, "https://github.com/fedora-infra/x/pull/1"),
        ({"web_url": "https://gitlab.com/a/b"}, "https://gitlab.com/a/b"),
        ({"link": "/w/uploads/d/d1/Cat.jpg"}, None),  # no host
        ({"url": "https://example.org/a b"}, None),  # a space
        ({"url": {"href": "https://example.org"}}, None),
        ({"url": "/relative", "link": "https://example.org/ok"}, "https://example.org/ok"),
        ({"job": {"url": "https://ci.example.org/job/1"}}, "https://ci.example.org/job/1"),
    ],
)
def test_links_come_from_url_fields_only_when_absolute_and_valid(body: dict[str, Any], link: str | None) -> None:
    """url/link/html_url/web_url become the link only when they would work when clicked."""
    assert generic_link(body) == link


@pytest.mark.parametrize(
    ("service", "rest", "agent", "body"),
    [
        ("mystery", "", None, None),
        ("mystery", "thing.comment", None, {}),
        ("mystery", "thing.receive", None, {}),
        ("mystery", "widget.update", "ralph", {"widget": {"name": "x" * 500}}),
        ("mystery", "widget.update", "ralph", {"title": "ends with to"}),
        ("my_service", "a.b.c", "ralph", {"title": ""}),
    ],
)
def test_the_generic_sentence_never_has_an_empty_slot(service: str, rest: str, agent: str | None, body: Any) -> None:
    """However little the topic and body say, the generic sentence reads as a sentence."""
    sentence = generic_subtitle(service, rest, agent, body)
    assert sentence_problem(sentence) is None, sentence
    assert service.split("_")[0] in sentence


def test_unknown_services_are_counted_as_fallbacks() -> None:
    """The benchmark and status can show which services have no file (where knowledge is thin)."""
    engine = MetaEngine()
    for _ in range(3):
        engine.compute(make("org.fedoraproject.prod.mystery.thing.new", {"agent": "ralph"}))
    assert engine.fallback_counts()["mystery"] == {"service": 3}


def test_invented_service_names_cannot_grow_the_fallback_counts_without_bound() -> None:
    """A publisher inventing a new service per message is counted, in bounded memory."""
    engine = MetaEngine()
    for number in range(3000):
        engine.compute(make(f"org.fedoraproject.prod.svc{number}.thing.new", {}))
    counts = engine.fallback_counts()
    assert len(counts) <= 2049
    assert sum(fields.get("service", 0) for fields in counts.values()) == 3000
