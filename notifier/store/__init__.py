"""The durable state the delivery stage reads and writes (SQLite by default).

``interface.Store`` is what the delivery stage uses; ``records`` the values it passes in
and gets back. ``sqlite`` (with ``sqlite_schema``, ``sqlite_digest``, ``sqlite_status``)
and ``postgresql`` (with ``pg_schema``, ``pg_digest``, ``pg_status``, ``pg_cluster``)
implement it; ``faults`` tells storage faults from bugs.
"""
