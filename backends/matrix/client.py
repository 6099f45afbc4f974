"""The homeserver connection of one Matrix account: login, rooms, sends, and errors.

Built on ``mautrix`` (its HTTP layer, error types and client-server API calls), imported
lazily so configuration checks work without the ``matrix`` extra. Every library error
becomes a :class:`~fedmsg_notify.backend.DeliveryError` here: ``M_LIMIT_EXCEEDED`` / 429
temporary with the server's ``retry_after_ms``, a connection failure or 5xx temporary
(the delivery stays queued), 403 and the like permanent with the server's reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fedmsg_notify.backend import BackendUnavailable, DeliveryError, PermanentFailure, TemporaryFailure, install_hint
from fedmsg_notify.render.sanitize import plain_text
from pydantic import SecretStr

from .content import destination_kind

if TYPE_CHECKING:
    from mautrix.client import ClientAPI

log = logging.getLogger(__name__)

# Waiting for a 429 that says nothing about when; Synapse always says.
DEFAULT_RETRY_AFTER = 5.0
# How soon to look again at an unreadable token or password file.
SECRET_RETRY = 60.0
MAX_ERROR_TEXT = 300
CLIENT = "/_matrix/client/v3"


class TokenRejected(TemporaryFailure):
    """The homeserver refused the access token (401): a password account logs in again."""


@dataclass(slots=True)
class Credentials:
    """Where an account's access token comes from."""

    homeserver: str
    user_id: str
    device_id: str
    token_file: Path | None
    password_file: Path | None
    token_cache: Path | None
    timeout: float


@dataclass(slots=True)
class Session:
    """One account's client and what it has learnt (rooms joined, DMs, encryption)."""

    account_name: str
    creds: Credentials
    client: ClientAPI | None = None
    rooms: dict[str, str] = field(default_factory=dict)  # destination -> room id
    checked: set[str] = field(default_factory=set)  # room ids known to be unencrypted and joined

    async def start(self) -> None:
        try:
            import aiohttp
            from mautrix.api import HTTPAPI
            from mautrix.client import ClientAPI
        except ImportError as exc:
            raise BackendUnavailable(
                f"account '{self.account_name}': the matrix backend needs mautrix: {install_hint('matrix')}"
            ) from exc
        await self.close()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.creds.timeout))
        api = _api_class(HTTPAPI)(self.creds.homeserver, "", client_session=session, default_retry_count=0)
        self.client = ClientAPI(mxid=self.creds.user_id, device_id=self.creds.device_id, api=api)  # type: ignore[arg-type]
        token = self._token()
        if token is None:
            token = await self._login()
        api.token = token.get_secret_value()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.api.session.close()
            self.client = None

    # -- credentials --

    def _token(self) -> SecretStr | None:
        """The configured token, else the one cached from an earlier login, else None."""
        if self.creds.token_file is not None:
            return SecretStr(_read_secret(self.creds.token_file, "token_file", self.account_name))
        cache = self.creds.token_cache
        if cache is None or not cache.exists():
            return None
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: ignoring unreadable token cache %s", self.account_name, cache)
            return None
        if data.get("homeserver") != self.creds.homeserver or data.get("user_id") != self.creds.user_id:
            return None
        token = data.get("access_token")
        return SecretStr(token) if isinstance(token, str) and token else None

    async def _login(self) -> SecretStr:
        assert self.client is not None and self.creds.password_file is not None
        password = _read_secret(self.creds.password_file, "password_file", self.account_name)
        try:
            response = await self.client.login(
                identifier=self.creds.user_id,  # type: ignore[arg-type]
                password=password, device_id=self.creds.device_id,
                device_name="fedmsg-notify", store_access_token=False,
            )
        except Exception as exc:
            raise translate(exc, f"login of {self.creds.user_id}") from None
        token = SecretStr(str(response.access_token))
        if self.creds.token_cache is not None:
            self._save_cache(token)
        log.info("%s: logged in as %s (device %s)", self.account_name, self.creds.user_id, response.device_id)
        return token

    def _save_cache(self, token: SecretStr) -> None:
        cache = self.creds.token_cache
        assert cache is not None
        data = {"homeserver": self.creds.homeserver, "user_id": self.creds.user_id,
                "device_id": self.creds.device_id, "access_token": token.get_secret_value()}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(cache, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
        except OSError as exc:
            # Not fatal: the next start logs in again (a new token, the same device).
            log.warning("%s: cannot cache the access token in %s: %s", self.account_name, cache, exc.strerror)

    def forget_token(self) -> None:
        """The server refused the token: a password account logs in again on the next start."""
        if self.creds.token_cache is not None and self.creds.password_file is not None:
            self.creds.token_cache.unlink(missing_ok=True)

    # -- rooms --

    async def room_for(self, to: str) -> str:
        """The room id to post to for ``to``: joined (alias or id) or a DM room, found once."""
        if to in self.rooms:
            return self.rooms[to]
        kind = destination_kind(to)
        if kind == "user":
            room = await self._direct_room(to)
        else:
            room = await self._join(to)
        await self._check_unencrypted(room, to)
        self.rooms[to] = room
        return room

    async def _join(self, room: str) -> str:
        assert self.client is not None
        try:
            joined = await self.client.join_room(room, max_retries=0)  # type: ignore[arg-type]
        except Exception as exc:
            raise translate(exc, f"joining {room}") from None
        return str(joined)

    async def _direct_room(self, user: str) -> str:
        """The DM room with ``user`` from ``m.direct`` account data, else a new one (recorded there)."""
        assert self.client is not None
        direct = await self._request("GET", f"/user/{quote(self.creds.user_id)}/account_data/m.direct",
                                     f"reading m.direct of {self.creds.user_id}", missing_ok=True)
        rooms = direct.get(user) if isinstance(direct, dict) else None
        joined = await self._request("GET", "/joined_rooms", "listing joined rooms")
        joined_ids = set(joined.get("joined_rooms", [])) if isinstance(joined, dict) else set()
        for room in rooms if isinstance(rooms, list) else []:
            if room in joined_ids:
                return str(room)
        created = await self._request("POST", "/createRoom", f"creating a direct room with {user}", {
            "is_direct": True, "invite": [user], "preset": "trusted_private_chat",
        })
        room_id = str(created["room_id"])
        mapping = dict(direct) if isinstance(direct, dict) else {}
        mapping[user] = [*(r for r in (rooms if isinstance(rooms, list) else []) if r in joined_ids), room_id]
        await self._request("PUT", f"/user/{quote(self.creds.user_id)}/account_data/m.direct",
                            "recording the direct room", mapping)
        log.info("%s: created direct room %s with %s", self.account_name, room_id, user)
        return room_id

    async def _check_unencrypted(self, room: str, to: str) -> None:
        state = await self._request("GET", f"/rooms/{quote(room)}/state/m.room.encryption/",
                                    f"reading the state of {to}", missing_ok=True)
        if state:
            raise PermanentFailure(f"matrix room {to} ({room}) is end-to-end encrypted; "
                                   "fedmsg-notify cannot post in encrypted rooms yet")

    async def send(self, room: str, content: Mapping[str, Any], txn_id: str, to: str) -> str:
        """PUT the event; the transaction id makes a repeat of the same PUT a no-op on the server."""
        path = f"/rooms/{quote(room)}/send/m.room.message/{quote(txn_id, safe='')}"
        response = await self._request("PUT", path, f"posting to {to}", dict(content))
        return str(response.get("event_id", "?")) if isinstance(response, dict) else "?"

    async def _request(self, method: str, path: str, what: str, content: Any = None,
                       *, missing_ok: bool = False) -> Any:
        assert self.client is not None
        from mautrix.api import Method
        from mautrix.errors import MNotFound

        try:
            return await self.client.api.request(Method(method), CLIENT + path, content)
        except MNotFound:
            if missing_ok:
                return {}
            raise PermanentFailure(f"{what}: not found on {self.creds.homeserver}") from None
        except Exception as exc:
            raise translate(exc, what) from None


def _api_class(base: type[Any]) -> type[Any]:
    """HTTPAPI that keeps what mautrix's errors drop: ``retry_after_ms`` and ``Retry-After``."""
    from mautrix.errors import make_request_error

    class RateAwareAPI(base):  # type: ignore[misc]
        async def _send(self, method: Any, url: Any, content: Any, query_params: Any, headers: Any) -> Any:
            request = self.session.request(str(method), url, data=content, params=query_params, headers=headers)
            async with request as response:
                if 200 <= response.status < 300:
                    return await response.json(), response
                text = await response.text()
                try:
                    body = json.loads(text)
                except ValueError:
                    body = {}
                body = body if isinstance(body, dict) else {}
                error = make_request_error(http_status=response.status, text=text, errcode=body.get("errcode"),
                                           message=body.get("error"))
                wait = body.get("retry_after_ms")
                if isinstance(wait, int | float) and wait >= 0:
                    error.retry_after = wait / 1000.0  # type: ignore[attr-defined]
                elif (header := response.headers.get("Retry-After", "")).strip().isdigit():
                    error.retry_after = float(header)  # type: ignore[attr-defined]
                raise error

    return RateAwareAPI


def translate(exc: BaseException, what: str) -> DeliveryError:
    """A mautrix or aiohttp exception as a delivery error naming what was being done."""
    import asyncio

    from mautrix.errors import MatrixConnectionError, MatrixRequestError

    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, MatrixRequestError):
        status = getattr(exc, "http_status", 0)
        code = getattr(exc, "errcode", None) or ""
        text = " ".join(plain_text(str(getattr(exc, "message", None) or exc)).split())[:MAX_ERROR_TEXT]
        reason = f"{what}: HTTP {status} {code}: {text}".rstrip(": ")
        if status == 429 or code == "M_LIMIT_EXCEEDED":
            wait = getattr(exc, "retry_after", None)
            return TemporaryFailure(reason, retry_after=wait if wait is not None else DEFAULT_RETRY_AFTER)
        if status == 401 or code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
            # The operator fixes the token file (or we log in again): keep the deliveries.
            return TokenRejected(reason, retry_after=SECRET_RETRY)
        if status >= 500 or status in (0, 408):
            return TemporaryFailure(reason)
        return PermanentFailure(reason)
    if isinstance(exc, MatrixConnectionError | OSError | asyncio.TimeoutError):
        return TemporaryFailure(f"{what}: homeserver unreachable: {type(exc).__name__}: {exc}")
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - mautrix needs it
        aiohttp = None  # type: ignore[assignment]
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        return TemporaryFailure(f"{what}: homeserver unreachable: {type(exc).__name__}: {exc}")
    return TemporaryFailure(f"{what}: unexpected {type(exc).__name__}: {exc}")


def _read_secret(path: Path, key: str, account: str) -> str:
    """One token or password from a file; temporary if unreadable, so queued posts wait for the fix."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TemporaryFailure(f"account '{account}': cannot read {key} {path}: {exc.strerror}",
                               retry_after=SECRET_RETRY) from None
    if not value or "\n" in value:
        raise TemporaryFailure(f"account '{account}': {key} {path} must hold exactly one line",
                               retry_after=SECRET_RETRY)
    return value
