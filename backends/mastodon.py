"""The Mastodon backend: posts on a microblog account (the successor of @fedora-firehose).

One rendered ``status`` part per message becomes one status (a "post"). What makes
this backend more than an HTTP POST:

* **Length as Mastodon counts it.** The instance's limit comes from
  ``GET /api/v2/instance`` (``/api/v1/instance`` on older servers), read once. Mastodon's
  ``StatusLengthValidator`` counts every http(s) URL as 23 characters
  (``characters_reserved_per_url``), counts only the ``@user`` part of a remote mention,
  and adds the content warning (``spoiler_text``) to the total. Text that does not fit
  is cut at a word boundary with an ellipsis and the trailing link is kept whole.
* **Text only.** Content from the bus is plain text: controls are stripped, the status
  is posted as ``text/plain`` (instances with Markdown/HTML posting honour that), and
  ``@user@host`` in message content is defused so the firehose never notifies or
  DMs anyone a message happens to name.
* **Never twice.** Every post carries an ``Idempotency-Key`` derived from
  (msg_id, destination): a retry after a timeout, or after a restart, returns the
  status the server already created instead of posting again.
* **Rate limits.** Default pace follows Mastodon's own limits; ``X-RateLimit-*`` headers
  and 429 ``Retry-After`` stop sending until the window resets, and the engine then
  coalesces the backlog through :meth:`MastodonBackend.summarise`.

The HTTP client is ``httpx`` (async, HTTP/1.1 keep-alive, precise timeouts), imported
lazily so that config validation works without the ``mastodon`` extra installed.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from fedmsg_notify.backend import (
    AccountOptions,
    Backend,
    BackendUnavailable,
    DeliveryError,
    Item,
    PermanentFailure,
    TemporaryFailure,
    install_hint,
    missing_modules,
)
from fedmsg_notify.config.validation import StrictModel
from fedmsg_notify.render.sanitize import plain_text
from pydantic import Field, SecretStr, field_validator

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

Visibility = Literal["public", "unlisted", "private", "direct"]

# Mastodon's defaults (app/validators/status_length_validator.rb,
# config/initializers/rack_attack.rb); the instance may advertise other values.
DEFAULT_MAX_CHARACTERS = 500
DEFAULT_URL_LENGTH = 23
ELLIPSIS = "…"
# Waiting this long for a rate-limit window we know nothing about is a guess; a 429
# without Retry-After or X-RateLimit-Reset is rare.
DEFAULT_RETRY_AFTER = 60.0
# Seconds for reading the instance's limits before a post.
INSTANCE_TIMEOUT = 5.0
# How soon to look at an unreadable token file again.
TOKEN_RETRY = 60.0
# An error text from the server is shown in logs and `status`; keep it to one short line.
MAX_ERROR_TEXT = 300
USER_AGENT = "fedmsg-notify (+https://github.com/fedora-infra/fedmsg-notify)"

# What Mastodon treats as a link for length counting (its URL_PATTERN is twitter-text's
# URL regex restricted to http/https). Trailing sentence punctuation is not part of the
# URL there either; leaving it outside means we never count a character as "free" that
# the server counts.
URL_RE = re.compile(r"(?<![A-Za-z0-9@$#])https?://[^\s<>\"'`]+?(?=[.,;:!?)\]}'\"]*(?:\s|$))", re.IGNORECASE)
# twitter-text only takes a link whose host ends in a top-level domain; for others
# (localhost, a bare IP) the server counts every character, and so do we.
DOMAIN_RE = re.compile(r"^https?://(?:[^/?#@\s]*@)?[^/?#:\s]+\.[^\W\d_]{2,}\.?(?::\d+)?(?:[/?#]|$)", re.IGNORECASE)
# A mention (Account::MENTION_RE: "@user" or "@user@host" after a non-word character)
# would notify that user, or DM them on a "direct" post. Content from the bus must
# not do that: every "@" that could start one is defused (a superset of Mastodon's rule).
MENTION_RE = re.compile(r"(?<!\w)@(?=\w)")
HASHTAG_RE = re.compile(r"^\w+$", re.UNICODE)
# U+2060 WORD JOINER after "@" breaks Mastodon's mention regex yet renders as nothing.
MENTION_BREAK = "@\u2060"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Zero-width joiner and emoji/text variation selectors: part of the character before them.
JOINERS = "\u200d\ufe0e\ufe0f"

# Mastodon limits each account to 300 posts per 3 hours (rack_attack.rb,
# "throttle/authenticated_api" is 300 requests per 5 minutes; posts are the stricter
# one). A token bucket with rate r and burst b sends at most b + r*T in any window T,
# so b + r * 10800 s <= 300 keeps us under the fixed window even in the worst case.
POST_WINDOW = 3 * 60 * 60
POST_LIMIT = 300
DEFAULT_BURST = 20
DEFAULT_RATE = (POST_LIMIT - DEFAULT_BURST) / POST_WINDOW  # ~1 post per 38.6 s


class MastodonAccount(AccountOptions):
    """``accounts.<name>`` for ``backend: mastodon``."""

    instance: str = Field(description="https://host of the instance (http only for 127.0.0.1/localhost)")
    token_file: Path = Field(description="file holding the account's access token (write:statuses)")
    visibility: Visibility = "public"
    # Hashtags appended per service, e.g. {bodhi: [fedora, bodhi]}; "*" applies to all.
    hashtags: dict[str, list[str]] = Field(default_factory=dict)
    # Under the engine's own send timeout (30 s), so a slow instance is reported by us, with a reason.
    timeout: float = Field(default=20.0, gt=0, le=600, description="seconds per HTTP request")

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        return instance_url(value)

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, value: Path) -> Path:
        path = value.expanduser()
        if not path.is_absolute():
            # The daemon runs from / under systemd; a relative path would silently
            # point somewhere else than where `check` looked.
            raise ValueError(f"token_file must be an absolute path, got '{value}'")
        return path

    @field_validator("hashtags")
    @classmethod
    def _hashtags(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for service, tags in value.items():
            for tag in tags:
                if not HASHTAG_RE.match(tag.removeprefix("#")):
                    raise ValueError(f"hashtag '{tag}' for '{service}' must be letters, digits or '_'")
        return {service: [tag.removeprefix("#") for tag in tags] for service, tags in value.items()}


class MastodonOptions(StrictModel):
    """Per-destination options in a rule: ``{via: firehose, visibility: unlisted, spoiler_text: ...}``."""

    visibility: Visibility | None = None
    # A content warning: shown instead of the text until the reader expands it.
    spoiler_text: str | None = Field(default=None, max_length=200)


def instance_url(value: str) -> str:
    """Validate an instance address: https, or http on the loopback only; no query or fragment."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"instance must be a URL like https://fosstodon.org, got '{value}'")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        # The access token travels in every request: plain HTTP would hand it to the network.
        raise ValueError(f"instance '{value}' must use https (http is allowed only for 127.0.0.1/localhost)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"instance '{value}' must be a plain address without credentials, query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


# --- Text: sanitising, counting and truncating as Mastodon counts -------------------


def defuse_mentions(text: str) -> str:
    """Stop ``@user`` / ``@user@host`` in message content from notifying (or DMing) anyone."""
    return MENTION_RE.sub(MENTION_BREAK, text)


def status_length(text: str, url_length: int = DEFAULT_URL_LENGTH) -> int:
    """The length Mastodon's validator gives ``text``: a link counts ``url_length``.

    Mastodon counts grapheme clusters; counting code points instead can only
    over-count (a cluster is one or more code points), so a text that fits here fits there.
    """
    length = 0
    pos = 0
    for match in URL_RE.finditer(text):
        length += match.start() - pos + _url_cost(match.group(), url_length)
        pos = match.end()
    return length + len(text) - pos


def _url_cost(url: str, url_length: int) -> int:
    return url_length if DOMAIN_RE.match(url) else max(len(url), url_length)


def _cut_point(text: str, budget: int, url_length: int) -> int:
    """Largest index ``i`` such that ``text[:i]`` fits ``budget``, never inside a URL."""
    used = 0
    pos = 0
    for match in URL_RE.finditer(text):
        plain = match.start() - pos
        if used + plain >= budget:
            return pos + (budget - used)
        used += plain
        cost = _url_cost(match.group(), url_length)
        if used + cost > budget:
            # The link would not fit whole: a half link is worse than none.
            return match.start()
        used += cost
        pos = match.end()
    return min(len(text), pos + (budget - used))


def _clean_boundary(text: str, cut: int) -> str:
    """``text[:cut]`` moved back to a word boundary (if one is near) or a whole character."""
    if cut >= len(text):
        return text
    # Never separate a base character from its combining marks or a ZWJ sequence.
    while cut > 0 and (unicodedata.combining(text[cut]) or text[cut] in JOINERS or text[cut - 1] == "\u200d"):
        cut -= 1
    head = text[:cut]
    if not text[cut].isspace():
        space = max(head.rfind(" "), head.rfind("\n"))
        # Back off to the previous word only if that loses little; otherwise a very
        # long "word" (a hash, an NVR) would leave nothing at all.
        if space > 0 and cut - space <= max(20, cut // 3):
            head = head[:space]
    return head.rstrip(" \n,;:-")


def fit_status(text: str, limit: int, *, url_length: int = DEFAULT_URL_LENGTH, reserved: int = 0) -> str:
    """``text`` cut to ``limit - reserved`` Mastodon characters, keeping a trailing link whole.

    ``reserved`` is what the content warning already takes (Mastodon counts it too).
    A link at the very end (the template's ``meta.link``) is kept; the body before
    it is cut at a word boundary and marked with an ellipsis.
    """
    budget = limit - reserved
    if status_length(text, url_length) <= budget:
        return text
    for body, tail in _keep_options(text):
        tail_cost = status_length(tail, url_length) + 1 if tail else 0
        if tail_cost + len(ELLIPSIS) > budget:
            continue
        room = budget - tail_cost - len(ELLIPSIS)
        head = _clean_boundary(body, _cut_point(body, room, url_length)) if room > 0 else ""
        return f"{head}{ELLIPSIS} {tail}" if tail else f"{head}{ELLIPSIS}"
    return ELLIPSIS[:budget]


def _keep_options(text: str) -> list[tuple[str, str]]:
    """Ways to split ``text`` into (body to cut, tail kept whole), most kept first.

    The tail is the run of links and hashtags that ends the text (the template's
    ``meta.link``, the configured hashtags). When it does not fit, the last link
    alone is kept; failing that, nothing is.
    """
    stripped = text.rstrip()
    tail_start = len(stripped)
    last_link: re.Match[str] | None = None
    for token in reversed(list(re.finditer(r"\S+", stripped))):
        word = token.group()
        if URL_RE.fullmatch(word):
            last_link = last_link or token
        elif not (word.startswith("#") and HASHTAG_RE.match(word[1:])):
            break
        tail_start = token.start()
    options = []
    if tail_start < len(stripped):
        options.append((stripped[:tail_start].rstrip(), stripped[tail_start:]))
    if last_link is not None and last_link.span() != (tail_start, len(stripped)):
        options.append((stripped[: last_link.start()].rstrip(), last_link.group()))
    options.append((stripped, ""))
    return options


# --- Rate limits --------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` (delta-seconds or HTTP-date, RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def reset_seconds(value: str | None, now: float) -> float | None:
    """Seconds until ``X-RateLimit-Reset``: Mastodon sends ISO 8601; some servers epoch seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        try:
            return max(0.0, datetime.fromisoformat(value).timestamp() - now)
        except ValueError:
            return None
    # A small number is a delta (some proxies send that), a large one an epoch time.
    return max(0.0, number - now) if number > 1e9 else max(0.0, number)


def idempotency_key(msg_id: str, destination: str, content: str = "") -> str:
    """Stable per (message, destination): the same across retries and daemon restarts.

    ``content`` is given for summaries, whose ``msg_id`` is made up by the engine
    (``coalesced:<first id>``): should such an id ever repeat within the server's key
    lifetime (an hour; e.g. after the state file was deleted), a different summary
    must not be mistaken for the earlier one and silently dropped.
    """
    digest = hashlib.sha256(f"{msg_id}\x00{destination}\x00{content}".encode()).hexdigest()
    return f"fedmsg-notify-{digest[:40]}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the instance allows, from its ``configuration.statuses``."""

    max_characters: int = DEFAULT_MAX_CHARACTERS
    url_length: int = DEFAULT_URL_LENGTH


def limits_from_instance(document: Any) -> Limits | None:
    """Read ``configuration.statuses`` of a v1 or v2 instance document; None if absent."""
    if not isinstance(document, dict):
        return None
    statuses = (document.get("configuration") or {}).get("statuses") or {}
    if not isinstance(statuses, dict):
        return None
    max_chars = statuses.get("max_characters")
    url_length = statuses.get("characters_reserved_per_url", DEFAULT_URL_LENGTH)
    if not isinstance(max_chars, int) or max_chars < 1:
        # Pre-3.x servers: only a bare "max_toot_chars" (Pleroma, glitch forks) or nothing.
        max_chars = document.get("max_toot_chars")
        if not isinstance(max_chars, int) or max_chars < 1:
            return None
    if not isinstance(url_length, int) or url_length < 0:
        url_length = DEFAULT_URL_LENGTH
    return Limits(max_characters=max_chars, url_length=url_length)


# --- Responses ----------------------------------------------------------------------


def error_text(response: httpx.Response) -> str:
    """The server's ``error`` (Mastodon's JSON error body), else the HTTP reason, on one line."""
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = str(body.get("error") or "")
        if body.get("error_description"):
            text = f"{text}: {body['error_description']}" if text else str(body["error_description"])
    if not text:
        text = response.reason_phrase or "no error text"
    text = " ".join(plain_text(text).split())
    return text[:MAX_ERROR_TEXT]


def classify(response: httpx.Response, now: float) -> DeliveryError | None:
    """The delivery error a response means, or None for success."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    reason = f"HTTP {status} from {response.request.url.host}: {error_text(response)}"
    if status == 429:
        # Both headers may be present; waiting for the later of the two means the
        # retry is not itself refused.
        waits = [
            wait
            for wait in (
                retry_after_seconds(response.headers.get("Retry-After"), now),
                reset_seconds(response.headers.get("X-RateLimit-Reset"), now),
            )
            if wait is not None
        ]
        return TemporaryFailure(reason, retry_after=max(waits) if waits else DEFAULT_RETRY_AFTER)
    if status == 408 or status >= 500:
        wait = retry_after_seconds(response.headers.get("Retry-After"), now)
        return TemporaryFailure(reason, retry_after=wait)
    if 300 <= status < 400:
        where = response.headers.get("Location", "?")
        return PermanentFailure(f"HTTP {status}: the instance address redirects to {where}; configure that instead")
    # 401 bad token, 403 suspended/forbidden, 422 validation, 404 wrong path: the same
    # request will fail the same way, so it is recorded rather than retried.
    return PermanentFailure(reason)


# --- The backend --------------------------------------------------------------------


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
