"""Editing files the way people do: a report "edited" in a test is saved as an editor saves it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def replace_json(path: Path, document: Any) -> None:
    """Writes `document` to a new file beside `path` and renames it over `path`.

    An editor (or `jq ... > new && mv new old`) replaces a report; the reports index sees every
    replaced report at the next retention step. An edit in place of a report that the retention
    step does not read waits for the next listing (see `report_index`, "Skipping the listing").
    """
    fresh = path.with_name(f".{path.name}.edited")
    fresh.write_text(json.dumps(document))
    fresh.replace(path)
