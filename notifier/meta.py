"""Message metadata: who did what to what, with a link, for every message.

(Foundation version: a generic sentence for every service. Per-service knowledge
lives in ``services/`` — see the rules issue.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fedmsg_notify.envelope import Message


@dataclass(frozen=True, slots=True)
class Meta:
    title: str
    subtitle: str
    link: str | None
    icon: str | None
    agent: str | None
    usernames: tuple[str, ...]
    packages: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_meta(message: Message) -> Meta:
    body = message.body if isinstance(message.body, dict) else {}
    agent = body.get("agent") or body.get("user") or message.envelope.get("username")
    agent = agent if isinstance(agent, str) else None
    title = message.parts.subtitle if hasattr(message.parts, "subtitle") else message.parts.subtopic
    sentence = f"{agent or 'someone'}: {message.parts.subtopic.replace('.', ' ')}"
    return Meta(
        title=title,
        subtitle=sentence,
        link=None,
        icon=None,
        agent=agent,
        usernames=(agent,) if agent else (),
        packages=(),
    )
