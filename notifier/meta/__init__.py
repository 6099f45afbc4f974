"""Stage 2, metadata: what a message is about (sentence, link, usernames, packages)."""
