"""Opening the store the ``state:`` setting names: a SQLite file, or a shared PostgreSQL database."""

from __future__ import annotations

import sqlite3

from fedmsg_notify.backend import install_hint
from fedmsg_notify.config.model import Config
from fedmsg_notify.config.yaml_positions import Position, Problem, ProblemsError
from fedmsg_notify.store.faults import BadStateFile, check_state_file
from fedmsg_notify.store.interface import Store
from fedmsg_notify.store.sqlite import Outbox


def open_store(config: Config, owner: str) -> Store:
    """The store ``state:`` names; a file or database that cannot serve reads like a config error."""
    if config.state_url is not None:
        try:
            from fedmsg_notify.daemon_cluster import open_shared_store
        except ImportError as exc:
            where = config.state_where or Position(config.source, 1, 1)
            problem = f"state: a PostgreSQL store needs psycopg: {install_hint('postgresql')} ({exc})"
            raise ProblemsError([Problem(where, problem)]) from exc

        return open_shared_store(config, owner)
    # Reported like a config error: the fix is the `state:` setting, its file or its directory.
    where = config.state_where or Position(config.source, 1, 1)
    try:
        # A damaged or foreign file is refused before anything writes to it.
        check_state_file(config.state_path)
        return Outbox(config.state_path)
    except BadStateFile as exc:
        raise ProblemsError([Problem(where, f"state: {exc}")]) from exc
    except (OSError, sqlite3.Error) as exc:
        raise ProblemsError([Problem(where, f"state: cannot open {config.state_path}: {exc}")]) from exc
