"""The pipeline a configuration asks for (rules, templates, metadata, backends), and a digest rendered with it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fedmsg_notify.backend import Destination
from fedmsg_notify.config.model import Config
from fedmsg_notify.delivery.digest import joined_parts
from fedmsg_notify.delivery.intake import Pipeline
from fedmsg_notify.matching.rules import Route, Rule, RuleSet
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.render.renderer import Renderer
from fedmsg_notify.store.records import DigestEntry

log = logging.getLogger(__name__)


def build_pipeline(config: Config) -> Pipeline:
    """Rules, templates and metadata for ``config``; raises :class:`ProblemsError` if any is invalid."""
    return Pipeline(
        rules=RuleSet.load(config.rule_paths, config.accounts),
        renderer=Renderer(config.template_paths),
        meta=MetaEngine(config.service_paths).compute,
        backends={name: account.backend for name, account in config.accounts.items()},
    )


def render_digest(
    pipeline: Pipeline, destination: Destination, entries: Sequence[DigestEntry], total: int
) -> Mapping[str, str]:
    """A digest's parts with the pipeline's templates (the plain joined text if its template fails)."""
    backend = pipeline.backends.get(destination.account)
    if backend is None:
        # The account is gone (reload); the digest waits in the store as the entries' text.
        return joined_parts(None, entries, total)
    first = entries[0]
    route = Route(
        destination=destination,
        rule=Rule(name=first.rule, file=first.rule_file),
        template=first.template,
        options=dict(first.options),
    )
    payload = [
        {"message": e.envelope, "topic": e.topic, "service": e.service, "meta": e.meta, "rendered": e.rendered}
        for e in entries
    ]
    try:
        return pipeline.renderer.render_digest(backend, payload, route, total)
    except Exception:
        log.exception("digest template for %s failed; sending the plain digest", destination)
        return joined_parts(backend, entries, total)
