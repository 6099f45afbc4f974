"""Stage 5, delivery: intake into the store, per-destination workers, retry, pacing, floods, digests."""
