"""Example rule files shipped as package data (read with importlib.resources)."""
