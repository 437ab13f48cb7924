"""Graph passes that rewrite the large-kernel conv into ops a target runs well, and their planning."""
