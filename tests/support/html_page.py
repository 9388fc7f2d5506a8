"""Reading the HTML report back: what each chart of each database section holds."""

from __future__ import annotations

from html.parser import HTMLParser

ChartKey = tuple[str, str, str]  # job, database, chart kind ("size" | "duration")


class _ChartCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.section: tuple[str, str] | None = None
        self.chart: str | None = None
        self.counts: dict[ChartKey, dict[str, int]] = {}
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        classes = found.get("class", "").split()
        if tag == "script":
            self.scripts += 1
        if tag == "section" and "database" in classes:
            self.section = (found["data-job"], found["data-database"])
        elif tag == "figure" and "data-chart" in found and self.section is not None:
            self.chart = found["data-chart"]
            self.counts[(*self.section, self.chart)] = {"point": 0, "failure": 0}
        elif self.section is not None and self.chart is not None:
            for kind in ("point", "failure"):
                if kind in classes:
                    self.counts[(*self.section, self.chart)][kind] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.chart = None
        elif tag == "section":
            self.section = None


def chart_marks(html: str) -> dict[ChartKey, dict[str, int]]:
    """Returns {(job, database, chart): {"point": n, "failure": m}} of a page or a DOM dump."""
    counter = _ChartCounter()
    counter.feed(html)
    counter.close()
    return counter.counts


def script_tags(html: str) -> int:
    """Returns how many <script> elements the page has."""
    counter = _ChartCounter()
    counter.feed(html)
    counter.close()
    return counter.scripts
