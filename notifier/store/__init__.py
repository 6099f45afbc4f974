"""The durable state the delivery stage reads and writes (SQLite by default)."""
