"""Which nick to try next when the server refuses one.

The configured ``alt_nicks`` come first, then short numbered variants of the nick
(``fedora-f1``, ``fedora-f2``…) that fit the server's nick length. That limit is the
``NICKLEN`` the server announces (ISUPPORT), which arrives only after registration; before
that, a nick the server calls erroneous although it is valid IRC is taken to be too long, and
the limit falls to RFC 1459's 9 characters, which every server accepts.
"""

from __future__ import annotations

from collections.abc import Iterable

RFC1459_NICKLEN = 9
MAX_NICKLEN = 30


class NickChooser:
    def __init__(self, nick: str, alt_nicks: Iterable[str] = (), limit: int = MAX_NICKLEN) -> None:
        self.nick = nick
        self.alt_nicks = list(alt_nicks)
        self.limit = limit
        self._tried: set[str] = {nick.lower()}

    def fits(self, nick: str) -> bool:
        return len(nick) <= self.limit

    def learn_limit(self, limit: int) -> None:
        """The server's announced ``NICKLEN``."""
        if limit > 0:
            self.limit = limit

    def refused(self, nick: str, *, erroneous: bool) -> str | None:
        """The next nick to try after the server refused ``nick`` (None: every choice is used up)."""
        if erroneous and len(nick) > RFC1459_NICKLEN and self.limit > RFC1459_NICKLEN:
            self.limit = RFC1459_NICKLEN  # most likely too long for this server
        for candidate in self._candidates():
            if self.fits(candidate) and candidate.lower() not in self._tried:
                self._tried.add(candidate.lower())
                return candidate
        return None

    def _candidates(self) -> Iterable[str]:
        yield from self.alt_nicks
        if len(self.nick) < self.limit:
            yield self.nick + "_"
        for n in range(1, 100):
            suffix = str(n)
            yield self.nick[: self.limit - len(suffix)] + suffix
