"""Bundled data: sample messages, embedded default configuration."""
