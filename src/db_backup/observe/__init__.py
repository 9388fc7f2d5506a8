"""What others see of a run: events, status, staleness, metrics, logs, alerts, the table sink."""
