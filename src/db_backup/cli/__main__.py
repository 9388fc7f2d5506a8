"""`python -m db_backup.cli`: the `db-backup` command without its console script."""

import sys

from db_backup.cli import main

sys.exit(main())
