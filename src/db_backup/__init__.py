"""db-backup: scheduled PostgreSQL logical backups run by systemd."""

__version__ = "0.1.0"
