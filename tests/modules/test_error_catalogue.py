"""The README's troubleshooting table lists every error text the pack raises.

Every ``PackError(...)`` / ``WorkflowError(...)`` raised in nodes/, batch/ and training/ is read from the source
with ``ast`` as a skeleton: its literal text with each f-string placeholder as ``<…>``. The first column of the
README's Troubleshooting table holds message beginnings in backticks, where ``<anything>`` and ``...`` stand for
variable text; each skeleton must begin like one of them (case and spacing aside). Rows need at least 12 literal
characters, so no catch-all row can hide a missing one. Messages built elsewhere and passed through
(``PackError(str(e))``) are the modules' ValueErrors re-raised with the input named and are not listed here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "nodes").glob("*.py")), *sorted((ROOT / "batch").glob("*.py")),
           *sorted((ROOT / "training").glob("*.py")), ROOT / "train.py", ROOT / "batch.py", ROOT / "_launcher.py"]
ERRORS = {"PackError", "WorkflowError"}
WILD = "\x00"


def _literal(node) -> str | None:
    """The message with every placeholder as WILD, or None when it is not built from literals in the call."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else WILD for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left), _literal(node.right)
        return None if left is None or right is None else left + right
    return None


def raised_messages() -> list[tuple[str, int, str]]:
    """(file, line, message skeleton) of every literal error message the pack raises."""
    out = []
    for path in SOURCES:
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in ERRORS:
                msg = _literal(node.args[0])
                # f"{name}: {e}" re-raises a module's ValueError with the input named: no text of its own
                if msg is not None and len(re.sub(r"[\W_]", "", msg.replace(WILD, ""))) >= 10:
                    out.append((path.relative_to(ROOT).as_posix(), node.lineno, msg))
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def readme_patterns() -> list[tuple[str, re.Pattern]]:
    """(text, regex) of every message beginning in the first column of the README's Troubleshooting table."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^## Troubleshooting\n(.*?)^## ", readme, re.S | re.M)
    assert m, "README.md has no '## Troubleshooting' section"
    out = []
    for line in m.group(1).splitlines():
        if not line.startswith("| ") or line.startswith(("| Message", "|---")):
            continue
        for text in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            out.append((text, pattern_of(text)))
    return out


def pattern_of(text: str) -> re.Pattern:
    """A README message beginning as a regex: ``<anything>``, ``...`` and ``…`` match any text."""
    parts = re.split(r"<[^>]*>|\.\.\.|…", _norm(text.replace("\\|", "|")))
    assert sum(len(p.strip()) for p in parts) >= 12, f"README row too generic: {text!r}"
    return re.compile(".*?".join(re.escape(p) for p in parts), re.S)


def listed(message: str, patterns) -> bool:
    skeleton = _norm(message.replace(WILD, "<…>"))
    return any(rx.match(skeleton) for _, rx in patterns)


def test_the_extractor_sees_the_pack_s_errors():
    found = raised_messages()
    assert len(found) > 60
    assert any("expected a discrete-time (DDPM-family) model" in m for _, _, m in found)
    rows = [("x", pattern_of("<file>: expected <what>, found an empty (0-byte) file"))]
    assert listed(f"{WILD}: expected {WILD}, found an empty (0-byte) file; download it again", rows)
    assert not listed(f"{WILD}: expected {WILD}, found a pickle", rows)


@pytest.mark.parametrize("where,line,message", raised_messages(), ids=lambda v: str(v)[:60])
def test_every_error_text_is_in_the_readme(where, line, message):
    assert listed(message, readme_patterns()), (
        f"{where}:{line}: add a README troubleshooting row that begins like {message.replace(WILD, '<…>')!r}")
