"""`python -m db_backup.cli`: the same as the `db-backup` command."""

import sys

from db_backup.cli import main

sys.exit(main())
