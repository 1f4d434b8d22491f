"""A plain-HTML list of every validation, added to the Data Docs index so it reads offline.

GX's index page draws its list of validation results with bootstrap-table loaded from public CDNs;
on a machine without internet (an air-gapped cluster, CI) the page shows headings and no results.
The validation pages themselves are server-rendered and read fine offline. So after every Data Docs
update we add, between markers, a static table (suite, day, status, failed expectations, link to the
page) built from the kept `reports/validation/<suite>/dt=D/result.json` files.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

from rankflow.paths import atomic_write_bytes

START, END = "<!-- rankflow:offline-index -->", "<!-- /rankflow:offline-index -->"


def _rows(reports_dir: Path, site_dir: Path) -> list[str]:
    rows = []
    for result_file in sorted((reports_dir / "validation").glob("*/dt=*/result.json")):
        try:
            result = json.loads(result_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being replaced right now by another process: the next update lists it
        page = result.get("data_docs_page")
        link = html.escape(os.path.relpath(page, site_dir)) if page else ""
        status = "passed" if result.get("success") else "FAILED"
        failures = result.get("statistics", {}).get("unsuccessful_expectations", "")
        rows.append(f"<tr><td>{html.escape(result.get('suite', ''))}</td><td>{html.escape(result.get('day', ''))}</td>"
                    f"<td>{status}</td><td>{failures}</td><td><a href=\"{link}\">page</a></td></tr>")
    return rows


def data_docs_index(reports_dir: Path) -> Path:
    """The Data Docs site's index page (the site is `reports_dir/data_docs`, checkpoint.SITE_DIRECTORY)."""
    return Path(reports_dir).resolve() / "data_docs" / "index.html"


def write_offline_index(reports_dir: Path) -> None:
    """Insert (or refresh) the static results table at the top of `reports_dir/data_docs/index.html`."""
    reports_dir = Path(reports_dir).resolve()
    index = data_docs_index(reports_dir)
    site_dir = index.parent
    if not index.exists():
        return
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), "", index.read_text(), flags=re.S)
    section = (f"{START}<section id=\"rankflow-results\" style=\"margin:1em\"><h3>rankflow validation results</h3>"
               "<table border=\"1\" cellpadding=\"4\"><tr><th>suite</th><th>day</th><th>status</th>"
               "<th>failed expectations</th><th>report</th></tr>"
               + "".join(_rows(reports_dir, site_dir)) + f"</table></section>{END}")
    body = re.search(r"<body[^>]*>", text)
    position = body.end() if body else 0
    atomic_write_bytes(index, (text[:position] + section + text[position:]).encode())
