"""The long-running service: its loop, its state file and its sd_notify glue."""
