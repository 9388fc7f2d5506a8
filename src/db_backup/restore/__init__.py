"""Bringing a backup back: sources, fetching, restore, verify and drills."""
