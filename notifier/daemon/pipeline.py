"""The pipeline a configuration asks for: rules, templates, metadata and backend classes."""

from __future__ import annotations

from fedmsg_notify.config.model import Config
from fedmsg_notify.delivery.intake import Pipeline
from fedmsg_notify.matching.rules import RuleSet
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.render.renderer import Renderer


def build_pipeline(config: Config) -> Pipeline:
    """Rules, templates and metadata for ``config``; raises :class:`ProblemsError` if any is invalid."""
    return Pipeline(
        rules=RuleSet.load(config.rule_paths, config.accounts),
        renderer=Renderer(config.template_paths),
        meta=MetaEngine(config.service_paths).compute,
        backends={name: account.backend for name, account in config.accounts.items()},
    )
