"""The command line: run, check, explain, tail, publish, status, demo."""
