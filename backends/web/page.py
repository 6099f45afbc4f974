"""The live page of a feed: autoescaped HTML, no inline script or style (strict CSP)."""

from __future__ import annotations

from datetime import UTC, datetime

import jinja2

from .hub import Feed

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ENV.filters["isotime"] = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

PAGE = _ENV.from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ feed.name }} · fedmsg-notify</title>
<link rel="stylesheet" href="/web.css">
<link rel="alternate" type="application/atom+xml" title="{{ feed.name }}" href="{{ atom }}">
</head>
<body>
<header><h1>{{ feed.name }}</h1><p><a href="{{ atom }}">Atom feed</a> · new items appear live</p></header>
<ol id="fn-items">
{% for item in items %}
<li class="fn-item" data-id="{{ item.seq }}">
<span class="fn-when">{{ item.updated | isotime }}</span>
<span class="fn-category">{{ item.category }}</span>
{% if item.link %}<a class="fn-title" href="{{ item.link }}" rel="noopener noreferrer">{{ item.title }}</a>
{% else %}<span class="fn-title">{{ item.title }}</span>{% endif %}
<div class="fn-summary">{{ item.summary }}</div>
</li>
{% endfor %}
</ol>
<script src="/embed.js" data-feed="{{ feed.name }}"{% if token %} data-token="{{ token }}"{% endif %}
 data-list="fn-items"></script>
</body>
</html>
"""
)


def render_page(feed: Feed, *, token: str | None) -> str:
    from urllib.parse import quote, urlencode

    atom = f"/feeds/{quote(feed.name, safe='')}.atom"
    if token:
        atom += "?" + urlencode({"token": token})
    return PAGE.render(feed=feed, items=feed.newest_first(), token=token, atom=atom)
