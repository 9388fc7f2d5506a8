"""`db-backup report --html FILE` on real backups: the page is written, a bad job is refused."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RunCli, Setup


def test_report_html_draws_every_backup_of_the_job(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    for _ in range(2):
        assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    page = tmp_path / "backups.html"
    done = run_cli("--config", str(setup.path), "report", "--html", str(page), "--job", "nightly")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{page}: 2 backup reports drawn"
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "shop" in html
    assert "http://" not in html and "https://" not in html  # self-contained

    done = run_cli("--config", str(setup.path), "report", "--html", str(page), "--job", "nosuch")
    assert done.returncode == 2 and "no job named 'nosuch'" in done.stderr
    done = run_cli("--config", str(setup.path), "report", "--html", "/nonexistent/dir/x.html")
    assert done.returncode == 1 and "/nonexistent/dir" in done.stderr
    assert "Traceback" not in done.stderr
