"""The README and docs/ as installed: every link resolves among the files the package ships.

The package installs what `debian/db-backup.docs` lists under /usr/share/doc/db-backup/ with the
same relative layout, so a link that resolves here among those files resolves on an installed
host. Every command of the README names the user it runs as.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def shipped() -> set[str]:
    """Returns the repository paths of every file the package installs as documentation."""
    files: set[str] = set()
    for line in (REPO / "debian/db-backup.docs").read_text().splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = REPO / entry
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files.update(str(p.relative_to(REPO)) for p in found)
    return files


def slug(heading: str) -> str:
    """Returns the anchor a Markdown renderer makes of a heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {
        slug(m.group(1))
        for m in re.finditer(r"^#{1,6} (.+)$", path.read_text(encoding="utf-8"), re.M)
    }


def test_every_link_of_the_shipped_pages_resolves_among_the_shipped_files() -> None:
    files = shipped()
    assert "README.md" in files and "docs/systemd.md" in files
    broken = []
    for page in sorted(p for p in files if p.endswith(".md")):
        for target in LINK.findall((REPO / page).read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto, file: absolute addresses
            name, _, anchor = target.partition("#")
            resolved = (REPO / page).parent / name if name else REPO / page
            relative = str(resolved.resolve().relative_to(REPO)) if name else page
            if relative not in files:
                broken.append(f"{page}: {target} (not shipped)")
            elif anchor and relative.endswith(".md") and anchor not in anchors(REPO / relative):
                broken.append(f"{page}: {target} (no such heading)")
    assert broken == []


def test_no_shipped_page_cites_the_benchmark_results_which_are_not_shipped() -> None:
    cited = [
        page
        for page in shipped()
        if page.endswith(".md") and "RESULTS.md" in (REPO / page).read_text(encoding="utf-8")
    ]
    assert cited == []


def test_every_readme_command_names_the_user_it_runs_as() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    unnamed = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        heredoc_end = None
        for line in block.splitlines():
            if heredoc_end is not None:
                heredoc_end = None if line == heredoc_end else heredoc_end
                continue
            if not line.startswith(("sudo ", "sudoedit ", "$ ")):
                unnamed.append(line)
            found = re.search(r"<<'(\w+)'", line)
            heredoc_end = found.group(1) if found else None
    assert unnamed == []


def test_the_readme_is_a_ten_minute_read() -> None:
    words = len((REPO / "README.md").read_text(encoding="utf-8").split())
    assert words <= 2000, f"README.md has {words} words; move detail to docs/"
