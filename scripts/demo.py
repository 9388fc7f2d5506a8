"""`make demo`: a throwaway PostgreSQL with sample data, one local backup job, the result shown.

Everything lives under .demo/ in the repository; `make demo-clean` removes it. Running the demo
again reuses the cluster and adds another backup (retention keeps the newest three).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.pgcluster import load_sample, start_cluster, table_fingerprint  # noqa: E402

DEMO = REPO / ".demo"
CLI = str(Path(sys.executable).with_name("db-backup"))


def main() -> int:
    """Runs the demo and returns 0 when the backup succeeded and restores identically."""
    DEMO.mkdir(exist_ok=True)
    os.chmod(DEMO, 0o755)
    port_file = DEMO / "port"
    port = int(port_file.read_text()) if port_file.exists() else None
    print("== starting a throwaway PostgreSQL under .demo/pg")
    cluster = start_cluster(DEMO / "pg", port)
    port_file.write_text(str(cluster.port))
    try:
        if "shop" not in cluster.psql("SELECT datname FROM pg_database").split():
            print("== loading the sample database 'shop' (4 tables, a view)")
            load_sample(cluster, "shop", 5000)
        config = DEMO / "config.yaml"
        config.write_text(
            f"""# written by scripts/demo.py
# The demo's directories belong to whoever runs it, root included: stay that user.
run_as: null
directories:
  data: {DEMO}/backups/data
  reports: {DEMO}/backups/reports
  state: {DEMO}/state
  logs: {DEMO}/log
storage:
  mode: local
jobs:
  - name: demo
    schedule: "0 2 * * *"
    databases: shop
    connection: {{host: {cluster.socket_dir}, port: {cluster.port}, user: postgres}}
    retention: {{days: 7, keep_last: 3}}
""",
            encoding="utf-8",
        )
        (DEMO / "log").mkdir(exist_ok=True)
        print(f"== db-backup --config {config} run demo")
        done = subprocess.run(
            [CLI, "--config", str(config), "--log-format", "console", "run", "demo"]
        )
        if done.returncode != 0:
            print("demo backup FAILED", file=sys.stderr)
            return 1
        reports = sorted((DEMO / "backups" / "reports").glob("*.json"))
        report = json.loads(reports[-1].read_text())
        print(f"== the report ({reports[-1]})")
        print(json.dumps(report, indent=2, ensure_ascii=False))
        dump = Path(report["local"]["file"])
        print("== sha256sum -c")
        subprocess.run(["sha256sum", "-c", f"{dump.name}.sha256"], cwd=dump.parent, check=True)
        print("== restoring into 'shop_restored' and comparing every table")
        cluster.restore(dump, "shop_restored")
        same = table_fingerprint(cluster, "shop") == table_fingerprint(cluster, "shop_restored")
        print("restored tables identical to the source:", "yes" if same else "NO")
        print(f"== db-backup --config {config} status")
        subprocess.run([CLI, "--config", str(config), "status"], check=True)
        return 0 if same else 1
    finally:
        cluster.stop()
        print("== PostgreSQL stopped; `make demo-clean` removes .demo/")


if __name__ == "__main__":
    sys.exit(main())
