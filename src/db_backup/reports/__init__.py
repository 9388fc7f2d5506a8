"""The report model, the reports index, drill reports and retention's choice."""
