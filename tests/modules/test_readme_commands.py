"""The README and docs/ show only commands that exist, and no line that has gone stale.

Every command line of a ```bash block in README.md, docs/development.md and docs/performance.md is checked: the
script it runs (``bash scripts/x.sh``, ``python .../x.py``, ``pip install -r .../requirements.txt``) is in the
repository, and each ``--option`` it passes is defined by that script (its text, or the Python files it runs or
that define its arguments). Paths are read relative to the pack however its folder is named: ``$PACK/`` and the
clone folder both stand for the repository root. ``cd``, ``git`` and ``cp`` lines name the reader's own folders
and are not checked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "development.md", ROOT / "docs" / "performance.md"]
CLONE_FOLDER = "comfyui-adaptbir/"  # the folder `git clone` makes in the README's manual installation
UNCHECKED = {"cd", "git", "cp", "PACK"}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def command_lines(block: str) -> list[str]:
    """Lines of a block with continuations joined and comments removed."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def repo_path(token: str) -> Path:
    for prefix in ("$PACK/", CLONE_FOLDER, "./"):
        token = token.removeprefix(prefix)
    return ROOT / token


def defining_files(script: Path) -> list[Path]:
    """The files that define a script's options: itself, the Python a shell script runs, and for a Python entry
    point the pack's Python files (its argument parsers live in batch/ and training/)."""
    files = [script]
    if script.suffix == ".sh":
        files += [ROOT / m for m in re.findall(r"scripts/[\w.]+\.py", script.read_text())]
    else:
        files += [*ROOT.glob("*.py"), *ROOT.glob("batch/*.py"), *ROOT.glob("training/*.py"), *ROOT.glob("scripts/*.py")]
    return files


def check(line: str) -> list[str]:
    """Problems of one command line (empty when it is fine)."""
    tokens = shlex.split(line, posix=True)
    if not tokens or tokens[0].split("=")[0] in UNCHECKED:
        return []
    if tokens[0] == "pip":
        reqs = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "-r"]
        return [f"{line}: {r} not in the repository" for r in reqs if not repo_path(r).is_file()]
    if tokens[0] == "bash" or tokens[0] == "python" or tokens[0].endswith("/bin/python"):
        script = repo_path(tokens[1])
        if not script.is_file():
            return [f"{line}: {tokens[1]} not in the repository"]
        text = "\n".join(f.read_text() for f in defining_files(script) if f.is_file())
        options = [t.split("=")[0] for t in tokens[2:] if t.startswith("--") and t != "--"]
        return [f"{line}: {script.relative_to(ROOT)} has no option {o}" for o in options
                if not re.search(re.escape(o) + r"(?![\w-])", text)]
    return [f"{line}: an unknown kind of command (extend tests/modules/test_readme_commands.py)"]


def sections(text: str, *names: str) -> str:
    parts = re.split(r"(?m)^(?=## )", text)
    return "\n".join(p for p in parts if p.split("\n", 1)[0][3:].strip() in names)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_shown_exists(doc):
    lines = [ln for b in bash_blocks(doc.read_text()) for ln in command_lines(b)]
    assert lines, f"{doc.name}: no bash block found"
    problems = [p for ln in lines for p in check(ln)]
    assert not problems, "\n".join(problems)


def test_quick_start_and_development_show_the_three_commands():
    readme = (ROOT / "README.md").read_text()
    quick = [ln for b in bash_blocks(sections(readme, "Quick start")) for ln in command_lines(b)]
    dev = [ln for b in bash_blocks(sections(readme, "Development")) for ln in command_lines(b)]
    assert "bash scripts/serve.sh" in quick and "bash scripts/setup.sh" in quick, quick
    assert dev == ["bash scripts/setup.sh", "bash scripts/test.sh", "bash scripts/serve.sh"], dev
    assert (ROOT / ".ci" / "run").read_text().count("bash scripts/") == 2, "CI runs the first two commands"
    for name in re.findall(r"`(workflows/[\w.]+\.json)`", sections(readme, "Quick start")):
        assert (ROOT / name).is_file(), name


def test_checker_refuses_what_does_not_exist():
    assert check("bash scripts/serve.sh --port 8190") == []
    assert check("bash scripts/serve.sh --no-such-option")
    assert check("bash scripts/no_such_script.sh")
    assert check("python $PACK/batch.py --no-such-option x")
    assert check("pip install -r comfyui-adaptbir/requirements.txt") == []


STALE = ["ComfyUI-AdaptBIR/", "lands in the next releases", "Target (issue 8)", "GPU results pending",
         "## Performance\n", "benchmark.py"]


def test_readme_has_no_stale_or_developer_line():
    """The README does not assume the pack's folder name, promise what is done, or carry the benchmarks."""
    readme = (ROOT / "README.md").read_text()
    found = [s for s in STALE if s in readme]
    assert not found, found
