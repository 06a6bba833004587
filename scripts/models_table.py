"""Write the README's models table from the models manifest (``nodes/models.json``), between the
``<!-- models:start -->`` and ``<!-- models:end -->`` markers.

    .venv/bin/python scripts/models_table.py          # rewrite README.md
    .venv/bin/python scripts/models_table.py --check  # exit 1 when README.md is out of date

tests/modules/test_manifest.py runs the check.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- models:start -->", "<!-- models:end -->"


def table(models: list[dict]) -> str:
    """The Markdown table: required files first (those a shipped workflow needs), then optional ones."""
    rows = ["| File | Folder | Source | Licence | Needed by |", "|---|---|---|---|---|"]
    for required in (True, False):
        for m in (m for m in models if m["required"] == required):
            if m["url"]:
                source = f"[download]({m['url']})" + (" (unofficial mirror)" if m.get("unofficial") else "")
                if m["page"]:
                    source += f", [page]({m['page']})"
            else:
                source = m.get("how", "").replace("|", "\\|")
            users = ", ".join(f"`{n.split('.')[0]}`" for n in dict.fromkeys(m["nodes"]))
            if m["workflows"]:
                users += "; workflows " + ", ".join(f"`{w}`" for w in m["workflows"])
            what = f" — {m['note']}" if m.get("note") else ""
            rows.append(f"| `{m['name']}`{what} | `models/{m['folder']}` | {source} | {m['licence']} | "
                        f"{'**required** by ' if required else 'optional: '}{users} |")
    return "\n".join(rows)


def section() -> str:
    models = json.loads((REPO / "nodes" / "models.json").read_text())["models"]
    return f"{START}\n{table(models)}\n{END}"


def rewrite(readme: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    return pattern.sub(lambda _: section(), readme)


def main(argv: list[str]) -> int:
    path = REPO / "README.md"
    text = path.read_text()
    new = rewrite(text)
    if "--check" in argv:
        return 0 if new == text else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
