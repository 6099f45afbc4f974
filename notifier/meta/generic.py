"""What any message says about itself: the extractor for services no file describes.

Fedora services grew the same habits: the actor is ``agent`` (or ``user``, ``username``,
``owner``, ``submitter``, ``author``), either a name or an object with ``name`` /
``username``; packages are ``package``/``packages``, a ``name`` next to an ``nvr`` or a
version and release, ``build.nvr``, ``nvr``/``nvrs``, ``rpm``; a link is ``url``,
``link``, ``html_url`` or ``web_url``. The sentence is built from the topic: its last
word is the event ("ralph edited mystery stack hacking"), and no part of it is ever an
empty slot. Service files fall back to these values when their own expressions fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fedmsg_notify.meta.filters import fas_user, is_scalar, nvr_name
from fedmsg_notify.meta.quality import sentence_problem, valid_link

AGENT_KEYS = ("agent", "username", "user", "owner", "submitter", "author")
# Keys whose value is (or holds) a person; "agent" first: it names who acted.
_USER_KEYS = frozenset((*AGENT_KEYS, "packager", "committer", "reporter", "creator", "assignee", "actor"))
_PERSON_NAME_KEYS = ("username", "name", "login", "nick")
_LINK_KEYS = ("url", "link", "html_url", "web_url", "weburl")
_PACKAGE_KEYS = frozenset(("package", "packages", "package_name", "component"))
_NVR_KEYS = frozenset(("nvr", "nvrs", "rpm", "srpm", "build", "builds"))
# Bodies are small JSON documents; people and packages sit within a few levels.
_WALK_DEPTH = 4
_WALK_NODES = 2000
_MAX_NAMES = 200

# Last topic word → (past tense with an agent, phrase without one), so an unknown
# service still reads "ralph updated …" or "… was updated", never "… commented on".
_VERBS: dict[str, tuple[str, str]] = {}
for _words, _forms in (
    ("new create created", ("created", "was created")),
    ("add added", ("added", "was added")),
    ("update updated", ("updated", "was updated")),
    ("edit edited", ("edited", "was edited")),
    ("delete deleted", ("deleted", "was deleted")),
    ("remove removed", ("removed", "was removed")),
    ("complete completed", ("completed", "completed")),
    ("done finish finished end", ("finished", "finished")),
    ("start started begin", ("started", "started")),
    ("change changed", ("changed", "changed")),
    ("comment", ("commented on", "got a comment")),
    ("request", ("requested", "was requested")),
    ("approve approved", ("approved", "was approved")),
    ("reject rejected", ("rejected", "was rejected")),
    ("fail failed", ("failed", "failed")),
    ("publish published", ("published", "was published")),
    ("upload uploaded", ("uploaded", "was uploaded")),
    ("receive", ("pushed to", "received a message")),
    ("push", ("pushed", "was pushed")),
    ("tag", ("tagged", "was tagged")),
    ("untag", ("untagged", "was untagged")),
    ("close closed", ("closed", "was closed")),
    ("open opened", ("opened", "was opened")),
    ("reopen", ("reopened", "was reopened")),
    ("merge merged", ("merged", "was merged")),
    ("retire", ("retired", "was retired")),
    ("award", ("awarded", "was awarded")),
    ("vote", ("voted on", "got a vote")),
    ("sign", ("signed", "was signed")),
    ("ready", ("readied", "is ready")),
    ("queued", ("queued", "was queued")),
    ("running", ("ran", "is running")),
    ("success", ("completed", "succeeded")),
    ("error", ("failed", "failed")),
    ("rename renamed", ("renamed", "was renamed")),
    ("move moved", ("moved", "was moved")),
    ("cancel canceled cancelled abort", ("cancelled", "was cancelled")),
    ("assign assigned", ("assigned", "was assigned")),
    ("flag flagged", ("flagged", "was flagged")),
    ("submit submitted", ("submitted", "was submitted")),
    ("expire expired", ("expired", "expired")),
    ("fork forked", ("forked", "was forked")),
    ("import imported", ("imported", "was imported")),
    ("release released", ("released", "was released")),
    ("report reported", ("reported", "was reported")),
    ("sync synced", ("synced", "was synced")),
    ("block blocked", ("blocked", "was blocked")),
    ("unblock unblocked", ("unblocked", "was unblocked")),
    ("deploy deployed", ("deployed", "was deployed")),
    ("restart restarted", ("restarted", "was restarted")),
    ("join joined", ("joined", "was joined")),
    ("pass passed", ("passed", "passed")),
    ("karma", ("gave karma to", "got karma")),
    ("save saved", ("saved", "was saved")),
):
    for _word in _words.split():
        _VERBS[_word] = _forms


def _person(value: Any) -> str | None:
    """A username from a name, an OpenID, a fedoraproject.org address or an object naming one."""
    if isinstance(value, dict):
        for key in _PERSON_NAME_KEYS:
            user = fas_user(value.get(key))
            if user:
                return user
        return None
    return fas_user(value)


def _walk(body: Any) -> Iterator[tuple[str, Any, dict[str, Any], int]]:
    """(key, value, the mapping holding it, depth) for every key of ``body``, breadth first and bounded."""
    queue: list[tuple[Any, int]] = [(body, 0)]
    seen = 0
    while queue and seen < _WALK_NODES:
        node, depth = queue.pop(0)
        seen += 1
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str):
                    yield key, value, node, depth
                if depth < _WALK_DEPTH and isinstance(value, (dict, list)):
                    queue.append((value, depth + 1))
        elif isinstance(node, list) and depth < _WALK_DEPTH:
            queue.extend((item, depth + 1) for item in node[:_MAX_NAMES] if isinstance(item, (dict, list)))


def generic_agent(body: Any) -> str | None:
    """Who acted: the first of ``agent``, ``username``, ``user``, ``owner``… at the top, else one level down."""
    if not isinstance(body, dict):
        return None
    nested = [value for value in body.values() if isinstance(value, dict)]
    for layer in (body, *nested):
        for key in AGENT_KEYS:
            value = layer.get(key)
            if isinstance(value, list):
                value = next((item for item in value if item), None)
            user = _person(value)
            if user:
                return user
    return None


def generic_usernames(body: Any, agent: str | None = None) -> tuple[str, ...]:
    """Everyone a body names under a person key (strings, objects with a name, lists of either)."""
    found: set[str] = {agent} if agent else set()
    for key, value, _holder, _depth in _walk(body):
        if key not in _USER_KEYS and not key.endswith(("_user", "_by")):
            continue
        for item in value[:_MAX_NAMES] if isinstance(value, list) else [value]:
            user = _person(item)
            if user:
                found.add(user)
        if len(found) >= _MAX_NAMES:
            break
    return tuple(sorted(found))


def _package_names(value: Any, *, parse_nvr: bool) -> Iterator[str]:
    items = value[:_MAX_NAMES] if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict):
            item = item.get("name") or item.get("package_name") or item.get("package") or item.get("nvr")
            if isinstance(item, dict):
                item = item.get("name")
            parse = parse_nvr or (isinstance(item, str) and item.count("-") >= 2)
        else:
            parse = parse_nvr
        if not isinstance(item, str) or not item.strip() or any(ch in item for ch in " /{}[]:,"):
            continue
        name = nvr_name(item) if parse else item.strip()
        if name:
            yield name


def generic_packages(body: Any) -> tuple[str, ...]:
    """Packages a body names: ``package(s)``, NVRs (``nvr``, ``build.nvr``, ``rpm``) and ``name`` beside a version."""
    found: set[str] = set()
    for key, value, holder, _depth in _walk(body):
        if key in _PACKAGE_KEYS:
            found.update(_package_names(value, parse_nvr=False))
        elif key in _NVR_KEYS and (isinstance(value, (str, list)) or key in ("build", "builds")):
            found.update(_package_names(value, parse_nvr=True))
        elif key == "name" and ("nvr" in holder or ("version" in holder and "release" in holder)):
            found.update(_package_names(value, parse_nvr=False))
        if len(found) >= _MAX_NAMES:
            break
    return tuple(sorted(found))


def generic_link(body: Any) -> str | None:
    """A working absolute link the body carries: ``url``, ``link``, ``html_url``, ``web_url`` (top level first)."""
    if not isinstance(body, dict):
        return None
    nested = [value for value in body.values() if isinstance(value, dict)]
    for layer in (body, *nested):
        for key in _LINK_KEYS:
            value = layer.get(key)
            if isinstance(value, str) and valid_link(value.strip()):
                return value.strip()
    return None


def _object_name(body: Any, words: list[str]) -> str | None:
    """A short human name for the topic's object (``body.stack.name``, else ``body.title``/``name``)."""
    if not isinstance(body, dict):
        return None
    candidates: list[Any] = []
    for word in reversed(words):
        obj = body.get(word)
        if isinstance(obj, dict):
            candidates += [obj.get("title"), obj.get("name"), obj.get("alias")]
        elif is_scalar(obj) and isinstance(obj, str):
            candidates.append(obj)
    candidates += [body.get("title"), body.get("name")]
    for value in candidates:
        if isinstance(value, str) and is_scalar(value):
            text = " ".join(value.split())
            if len(text) <= 60 and not any(ch in text for ch in '{}[]"') and text.lower() not in ("none", "null"):
                # A title with spaces is quoted so it reads as a name, not as part of the sentence.
                return f'"{text}"' if " " in text else text
    return None


def generic_subtitle(service: str, rest: str, agent: str | None, body: Any = None) -> str:
    """``ralph updated mystery widget``; ``mystery crawler started``; ``kevin: mystery frobnicate``."""
    words = [w for w in re.split(r"[._]", rest) if w]
    service_words = [w for w in re.split(r"[._]", service) if w] or ["fedmsg"]
    forms = _VERBS.get(words[-1].lower()) if words else None
    objects = words[:-1] if forms is not None else words
    thing = " ".join([*service_words, *objects])
    name = _object_name(body, objects)
    if name and name.lower() not in thing.lower().split():
        named = _sentence(f"{thing} {name}", forms, agent)
        if sentence_problem(named) is None:
            return named
    return _sentence(thing, forms, agent)


def _sentence(thing: str, forms: tuple[str, str] | None, agent: str | None) -> str:
    if forms is not None:
        return f"{agent} {forms[0]} {thing}" if agent else f"{thing} {forms[1]}"
    return f"{agent}: {thing}" if agent else f"new {thing} message"
