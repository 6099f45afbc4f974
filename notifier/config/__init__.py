"""Configuration: the config model and loader, YAML with positions, validation, secret redaction."""
