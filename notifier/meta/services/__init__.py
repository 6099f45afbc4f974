"""Per-service knowledge of message shapes, one YAML file per service."""
