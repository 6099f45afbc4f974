"""The Mastodon backend: one status per delivery, posted with an idempotency key, paced by the server's limits."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from fedmsg_notify.backend import (
    AccountOptions,
    Backend,
    BackendUnavailable,
    Item,
    PermanentFailure,
    TemporaryFailure,
    install_hint,
    missing_modules,
)
from fedmsg_notify.backends.mastodon.api import Limits, classify, idempotency_key, limits_from_instance, reset_seconds
from fedmsg_notify.backends.mastodon.settings import MastodonAccount, MastodonOptions
from fedmsg_notify.backends.mastodon.text import (
    DEFAULT_MAX_CHARACTERS,
    URL_RE,
    defuse_mentions,
    fit_status,
    status_length,
)
from fedmsg_notify.config.validation import StrictModel
from fedmsg_notify.render.sanitize import plain_text
from pydantic import SecretStr

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

# Seconds for reading the instance's limits before a post.
INSTANCE_TIMEOUT = 5.0
# How soon to look at an unreadable token file again.
TOKEN_RETRY = 60.0
USER_AGENT = "fedmsg-notify (+https://github.com/fedora-infra/fedmsg-notify)"

# Mastodon limits each account to 300 posts per 3 hours (rack_attack.rb,
# "throttle/authenticated_api" is 300 requests per 5 minutes; posts are the stricter
# one). A token bucket with rate r and burst b sends at most b + r*T in any window T,
# so b + r * 10800 s <= 300 keeps us under the fixed window even in the worst case.
POST_WINDOW = 3 * 60 * 60
POST_LIMIT = 300
DEFAULT_BURST = 20
DEFAULT_RATE = (POST_LIMIT - DEFAULT_BURST) / POST_WINDOW  # ~1 post per 38.6 s


class MastodonBackend(Backend):
    name: ClassVar[str] = "mastodon"
    parts: ClassVar[tuple[str, ...]] = ("status",)
    max_length: ClassVar[int | None] = DEFAULT_MAX_CHARACTERS
    rate: ClassVar[float] = DEFAULT_RATE
    burst: ClassVar[int] = DEFAULT_BURST
    # templates/mastodon/digest.j2 makes one post of a digest; send() fits it to the limit.
    supports_digest: ClassVar[bool] = True
    needs_recipient: ClassVar[bool] = False
    extra: ClassVar[str | None] = "mastodon"
    Account: ClassVar[type[AccountOptions]] = MastodonAccount
    Options: ClassVar[type[StrictModel]] = MastodonOptions

    # Fake-able clocks: monotonic for waiting, wall time for the server's reset stamps.
    clock: Callable[[], float] = staticmethod(time.monotonic)
    wall_clock: Callable[[], float] = staticmethod(time.time)


    @classmethod
    def missing_libraries(cls, account: AccountOptions) -> list[str]:
        return missing_modules("httpx")

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        super().__init__(account_name, account)
        assert isinstance(account, MastodonAccount)
        self.settings: MastodonAccount = account
        self.limits = Limits()
        self._limits_known = False
        self._client: httpx.AsyncClient | None = None
        self._token: SecretStr | None = None
        # Monotonic time before which the server told us not to post.
        self._blocked_until = 0.0

    # -- lifecycle --

    async def start(self) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise BackendUnavailable(
                f"account '{self.account_name}': the mastodon backend needs httpx: {install_hint('mastodon')}"
            ) from exc
        self._token = self._read_token()
        if self._client is not None:
            await self._client.aclose()
        # No request here: the daemon starts every backend before it listens, and an
        # unreachable instance must not hold up the others. Limits are read on first send.
        self._client = httpx.AsyncClient(
            base_url=self.settings.instance,
            timeout=self.settings.timeout,
            headers={"Authorization": f"Bearer {self._token.get_secret_value()}", "User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _read_token(self) -> SecretStr:
        # Temporary, not permanent: the engine retries the start before each send, so
        # once the operator fixes the file the queued posts go out instead of being lost.
        path = self.settings.token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = f"account '{self.account_name}': cannot read token_file {path}: {exc.strerror}"
            raise TemporaryFailure(reason, retry_after=TOKEN_RETRY) from exc
        if not token or any(ch.isspace() for ch in token):
            reason = f"account '{self.account_name}': token_file {path} must hold exactly one access token"
            raise TemporaryFailure(reason, retry_after=TOKEN_RETRY)
        return SecretStr(token)

    async def _load_limits(self) -> None:
        """Read the instance's status limits once; keep Mastodon's defaults if it won't say."""
        assert self._client is not None
        import httpx

        for path in ("/api/v2/instance", "/api/v1/instance"):
            try:
                # Short: the post that follows needs its share of the engine's send timeout.
                response = await self._client.get(path, timeout=min(self.settings.timeout, INSTANCE_TIMEOUT))
            except httpx.HTTPError as exc:
                # Asked again before the next post; until then Mastodon's default applies.
                log.warning("%s: cannot read %s%s (%s); assuming %d characters", self.account_name,
                            self.settings.instance, path, _describe(exc), self.limits.max_characters)
                return
            if response.status_code == 429 or response.status_code >= 500:
                log.warning("%s: %s%s answered HTTP %d; assuming %d characters for now", self.account_name,
                            self.settings.instance, path, response.status_code, self.limits.max_characters)
                return
            if response.status_code == 200:
                try:
                    found = limits_from_instance(response.json())
                except ValueError:
                    found = None
                if found is not None:
                    self.limits = found
                    self._limits_known = True
                    log.info("%s: %s allows %d characters per post", self.account_name,
                             self.settings.instance, found.max_characters)
                    return
        # Answered, but without limits: an old or non-Mastodon server. Asking again won't help.
        self._limits_known = True
        log.warning("%s: %s does not publish its status limits; assuming %d characters",
                    self.account_name, self.settings.instance, self.limits.max_characters)

    # -- sending --

    async def send(self, item: Item) -> None:
        if self._client is None:
            raise TemporaryFailure(f"account '{self.account_name}' is not started")
        self._check_blocked()
        if not self._limits_known:
            await self._load_limits()
        payload = self.build_payload(item)
        content = item.rendered.get("status", "") if item.count > 1 else ""
        response = await self._post(payload, idempotency_key(item.msg_id, item.destination.key, content))
        now = self.wall_clock()
        self._note_rate_limit(response, now)
        failure = classify(response, now)
        if failure is not None:
            if failure.temporary and failure.retry_after and response.status_code == 429:
                self._blocked_until = max(self._blocked_until, self.clock() + failure.retry_after)
            raise failure
        log.debug("%s: posted %s as %s", self.account_name, item.msg_id, _status_url(response))

    def preview(self, item: Item) -> dict[str, str]:
        """The status as it would be posted (hashtags added, cut to the instance's limit)."""
        payload = self.build_payload(item)
        return {key: payload[key] for key in ("status", "visibility", "spoiler_text") if payload.get(key)}

    def build_payload(self, item: Item) -> dict[str, str]:
        """The form fields of ``POST /api/v1/statuses`` for ``item``."""
        options = MastodonOptions.model_validate(dict(item.options)) if item.options else MastodonOptions()
        spoiler = " ".join(plain_text(options.spoiler_text or "").split())
        text = defuse_mentions(plain_text(item.rendered.get("status", ""))).strip()
        tags = self._hashtags_for(item.service)
        if tags:
            text = f"{text}\n\n{' '.join('#' + tag for tag in tags)}" if text else " ".join("#" + t for t in tags)
        if not text:
            raise PermanentFailure(f"template for {item.topic} rendered an empty status")
        # Mastodon adds the content warning to the count as it is: links there are not discounted.
        reserved = len(spoiler)
        payload = {
            "status": fit_status(text, self.limits.max_characters, url_length=self.limits.url_length,
                                 reserved=reserved),
            "visibility": options.visibility or self.settings.visibility,
            # Instances that accept Markdown/HTML posts (glitch-soc and friends) must
            # treat bus content as text; vanilla Mastodon ignores the field.
            "content_type": "text/plain",
        }
        if spoiler:
            payload["spoiler_text"] = spoiler
        return payload

    def _hashtags_for(self, service: str) -> list[str]:
        tags = [*self.settings.hashtags.get("*", []), *self.settings.hashtags.get(service, [])]
        return list(dict.fromkeys(tags))

    async def _post(self, payload: Mapping[str, str], key: str) -> httpx.Response:
        """The transport: one POST, library exceptions translated to delivery errors."""
        assert self._client is not None
        import httpx

        try:
            return await self._client.post("/api/v1/statuses", data=dict(payload),
                                           headers={"Idempotency-Key": key})
        except httpx.TimeoutException as exc:
            # The server may have stored the post; the retry carries the same key.
            raise TemporaryFailure(f"{self.settings.instance}: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise TemporaryFailure(f"{self.settings.instance}: {_describe(exc)}") from exc

    def _check_blocked(self) -> None:
        wait = self._blocked_until - self.clock()
        if wait > 0:
            raise TemporaryFailure(f"{self.settings.instance}: rate limited for {math.ceil(wait)} s more",
                                   retry_after=wait)

    def _note_rate_limit(self, response: httpx.Response, now: float) -> None:
        """After the last request of a window, stop until it resets rather than earn a 429."""
        remaining = response.headers.get("X-RateLimit-Remaining")
        if remaining is None or not remaining.strip().isdigit() or int(remaining) > 0:
            return
        wait = reset_seconds(response.headers.get("X-RateLimit-Reset"), now)
        if wait:
            self._blocked_until = max(self._blocked_until, self.clock() + wait)
            log.info("%s: rate limit used up; next post in %.0f s", self.account_name, wait)

    # -- flood coalescing --

    def summarise(self, items: Sequence[Item]) -> dict[str, str]:
        """One post for a backlog: "12 bodhi update request stable messages:" and a line per message."""
        limit = self.limits.max_characters
        url_length = self.limits.url_length
        total = sum(item.count for item in items)
        lines = Counter[str]()
        for item in items:
            lines[_summary_line(item)] += item.count
        text = _summary_heading(items, total)
        shown = 0
        for line, count in lines.items():
            entry = f"\n• {line}" + (f" (×{count})" if count > 1 else "")
            rest = total - shown - count
            more = f"\n…and {rest} more" if rest > 0 else ""
            if status_length(text + entry + more, url_length) > limit:
                break
            text += entry
            shown += count
        if shown < total:
            text += f"\n…and {total - shown} more"
        return {"status": fit_status(text, limit, url_length=url_length)}


def _subtopic(item: Item) -> str:
    """``bodhi.update.comment`` from ``org.fedoraproject.prod.bodhi.update.comment``."""
    marker = f".{item.service}."
    index = item.topic.find(marker)
    return item.topic[index + 1 :] if index >= 0 else item.topic


def _summary_heading(items: Sequence[Item], total: int) -> str:
    subtopics = {_subtopic(item) for item in items}
    if len(subtopics) == 1:
        return f"{total} {subtopics.pop().replace('.', ' ')} messages:"
    per_service = Counter[str]()
    for item in items:
        per_service[item.service] += item.count
    if len(per_service) == 1:
        return f"{total} {next(iter(per_service))} messages:"
    detail = ", ".join(f"{service} {count}" for service, count in per_service.most_common())
    return f"{total} messages ({detail}):"


def _summary_line(item: Item) -> str:
    """The one-sentence gist of an item, without links (each would cost 23 characters)."""
    subtitle = item.meta.get("subtitle") if item.meta else None
    text = subtitle if isinstance(subtitle, str) and subtitle.strip() else item.rendered.get("status", "")
    text = URL_RE.sub("", defuse_mentions(plain_text(text)))
    return " ".join(text.split()) or _subtopic(item)


def _status_url(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "?"
    return str(body.get("url") or body.get("id") or "?") if isinstance(body, dict) else "?"


def _describe(exc: Exception) -> str:
    """An httpx exception as a short phrase; its text never holds our headers or token."""
    name = type(exc).__name__
    detail = str(exc)
    return f"{name}: {detail}" if detail else name
