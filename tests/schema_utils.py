"""The schema of the score files (docs/scores.md, between the schema markers), as patterns of flat keys."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs/scores.md"
PLACEHOLDERS = {
    "<part>": "(?:generated|real_reference)",
    "<space>": "[a-z]+/[a-z]+",
    "<score>": "[a-z0-9_]+",
    "<field>": "(?:space|arch|weights_sha256|version)",
}


def schema_rows() -> list[tuple[str, str]]:
    """(key pattern as written, its meaning) for every row of the schema table."""
    text = DOC.read_text()
    table = text[text.index("<!-- schema:start -->") : text.index("<!-- schema:end -->")]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`"), cells[1]))
    return rows


def key_regex(pattern: str) -> re.Pattern[str]:
    out = re.escape(pattern)
    for name, rx in PLACEHOLDERS.items():
        out = out.replace(re.escape(name), rx)
    return re.compile(out + r"\Z")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def schema_problems(result: dict) -> list[str]:
    """Keys of a score file that no schema row describes, and rows (other than the ones marked as
    belonging to one file or option only) that no key of the file matches."""
    rows = [(p, meaning, key_regex(p)) for p, meaning in schema_rows()]
    keys = sorted(flatten(result))
    problems = [f"undocumented key {k}" for k in keys if not any(rx.match(k) for _, _, rx in rows)]
    for pattern, meaning, rx in rows:
        if " only)" not in meaning and not any(rx.match(k) for k in keys):
            problems.append(f"documented key {pattern} is missing")
    return problems
