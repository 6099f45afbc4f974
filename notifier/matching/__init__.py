"""Stage 3, matching: rule files compiled to conditions, and the index that finds candidates."""
