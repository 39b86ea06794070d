"""The one Markdown helper of the lab commands: tables, the generated sections that `mnistgan bench`
(BENCHMARKS.md) and `mnistgan results` (the README) rewrite, and `mnistgan compare`'s page (Markdown and
a self-contained HTML copy). Calibrate and verify write their tables with it too."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub table: the header, its `---` line, then one line per row (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def replace_section(text: str, begin: str, end: str, body: str, title: str | None = None) -> str:
    """Replace what lies between the markers `begin` and `end` with body.

    Markers that are not there: a section `## {title}` holding them is appended, or, with no title,
    ValueError names the markers.
    """
    block = f"{begin}\n{body.rstrip()}\n{end}"
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        return text[:i] + block + text[j + len(end) :]
    if title is None:
        raise ValueError(f"markers {begin} ... {end} not found")
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{sep}## {title}\n\n{block}\n"


# ---- `mnistgan compare`'s page, as Markdown and as HTML ----------------------------------------------


def _img_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def comparison_page(tables: list, curves: Path | None, grids: dict[str, Path | None], out_dir: Path) -> str:
    """reports/compare.md (`mnistgan compare`): the tables, the curves and each run's last grid, linked."""
    parts = ["# Comparing runs", ""]
    for title, header, rows in tables:
        parts += [f"## {title}", "", table(header, rows), ""]
    if curves:
        parts += ["## Training curves", "", f"![training curves]({curves.relative_to(out_dir)})", ""]
    parts += ["## Last sample grids", ""]
    for label, grid in grids.items():
        parts.append(f"**{label}**: " + (f"![{label}]({grid.relative_to(out_dir)})" if grid else "no grid logged"))
        parts.append("")
    return "\n".join(parts)


def comparison_html(tables: list, curves: Path | None, grids: dict[str, Path | None]) -> str:
    """reports/compare.html: the same as one self-contained page, images embedded as data URIs."""
    esc = html.escape
    body = ["<h1>Comparing runs</h1>"]
    for title, header, rows in tables:
        body.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        body.append("</table>")
    if curves:
        body.append(f'<h2>Training curves</h2><img alt="training curves" src="{_img_data(curves)}">')
    body.append('<h2>Last sample grids</h2><div class="grids">')
    for label, grid in grids.items():
        img = f'<img alt="{esc(label)}" src="{_img_data(grid)}">' if grid else "<p>no grid logged</p>"
        body.append(f"<figure>{img}<figcaption>{esc(label)}</figcaption></figure>")
    body.append("</div>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
        ".grids{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}img{max-width:100%}"
        ".grids img{width:420px;image-rendering:pixelated}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mnistgan: comparing runs</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
