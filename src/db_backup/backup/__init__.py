"""A backup run: dumps, streaming to targets, claims, space and row counts."""
