"""The pack's runtime requirements: exactly what the runtime imports, and harmless to the ComfyUI they join.

1. ``requirements.txt`` names every third-party distribution that the runtime code (the files ComfyUI and the two
   scripts load: ``__init__.py``, ``nodes/``, ``modules/``, ``batch/``, ``training/``, ``batch.py``, ``train.py``,
   ``_launcher.py``) imports, except the host itself (ComfyUI's modules, torch), and nothing else; lower bounds
   only; ``pyproject.toml`` declares the same list. One exception: a package imported only lazily (every import of
   it inside a function, so that loading the pack never needs it) may instead be an optional feature's package,
   named by one of ``pyproject.toml``'s ``[project.optional-dependencies]`` extras other than ``test`` (e.g. ``ray``
   for ``batch.py --ray``, extra ``distributed``). Any top-level import must be in ``requirements.txt``.
2. pip's own resolver (``pip install --dry-run --ignore-installed --report``, the installed torch pinned) resolves
   ComfyUI's requirements alone, then ComfyUI's + ours with every package of the first resolution pinned: the
   second must resolve (no upgrade or downgrade is needed) and may add only the pack's own requirements. Runs for
   ComfyUI 0.3.75 (the test host) and 0.12.1 (``../shared/hosts/comfyui-0.12.1.tar.gz``, skipped when absent).
   Needs the package index (marker ``index``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = ["__init__.py", "_launcher.py", "batch.py", "train.py", "nodes", "modules", "batch", "training"]
# Modules of the host: ComfyUI's own top-level modules and packages, and torch (which comes with the user's
# ComfyUI and must never be reinstalled by a pack).
HOST_MODULES = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "nodes", "server",
                "execution", "utils", "latent_preview", "node_helpers", "app", "torch", "torchvision"}
PACK_MODULES = {"adaptbir_restoration", "_launcher"}
# CI has shared/ beside the checkout; a git worktree elsewhere can point at it with ADAPTBIR_SHARED_HOSTS
SHARED_HOSTS = Path(os.environ.get("ADAPTBIR_SHARED_HOSTS") or REPO.parent / "shared" / "hosts")


def requirement_lines(path: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def runtime_imports(lazy: bool | None = None) -> dict[str, set[str]]:
    """Top-level module name -> files of the runtime that import it (absolute imports only). ``lazy=False``: only
    imports run when the file is loaded (not inside a function); ``lazy=True``: only imports inside a function;
    ``None``: all."""
    found: dict[str, set[str]] = {}
    files = [p for entry in RUNTIME for p in ((REPO / entry).rglob("*.py") if (REPO / entry).is_dir()
                                             else [REPO / entry])]

    def visit(node: ast.AST, in_function: bool, path: Path) -> None:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if lazy is None or lazy == in_function:
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, path)

    for path in files:
        visit(ast.parse(path.read_text(), str(path)), False, path)
    return found


def third_party_dists(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """Distribution name (lower case, ``-`` for ``_``) -> files importing it, of the third-party modules in
    ``imports``; fails for a module no installed distribution provides."""
    third_party = {m: files for m, files in imports.items()
                   if m not in sys.stdlib_module_names and m not in HOST_MODULES and m not in PACK_MODULES}
    module_dists = importlib.metadata.packages_distributions()
    unknown = sorted(m for m in third_party if m not in module_dists)
    assert not unknown, f"runtime imports of no installed distribution: {unknown} ({[third_party[m] for m in unknown]})"
    dists: dict[str, set[str]] = {}
    for m, files in third_party.items():
        dists.setdefault(module_dists[m][0].lower().replace("_", "-"), set()).update(files)
    return dists


def test_requirements_are_what_the_runtime_imports():
    eager = third_party_dists(runtime_imports(lazy=False))
    lazy_only = {d: f for d, f in third_party_dists(runtime_imports(lazy=True)).items() if d not in eager}
    reqs = requirement_lines(REPO / "requirements.txt")
    declared = {dist_name(r) for r in reqs}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = {name: {dist_name(r) for r in rs} for name, rs in project.get("optional-dependencies", {}).items()
              if name != "test"}
    in_extras = set().union(*extras.values()) if extras else set()
    # a lazily imported package is either a requirement or an optional feature's package (an extra names it)
    optional = {d for d in lazy_only if d not in declared}
    undeclared = {d: sorted(lazy_only[d]) for d in optional if d not in in_extras}
    assert not undeclared, (f"imported only inside functions but neither in requirements.txt nor in a pyproject "
                            f"extra (other than 'test'): {undeclared}")
    imported = set(eager) | (set(lazy_only) - optional)
    assert declared == imported, (f"requirements.txt lists {sorted(declared - imported)} that the runtime never "
                                  f"imports and misses {sorted(imported - declared)} that it does (files: "
                                  f"{ {d: sorted(eager[d]) for d in imported - declared} })")
    assert not declared & in_extras, f"packages both required and optional: {sorted(declared & in_extras)}"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+>=[0-9][0-9a-z.]*", r) for r in reqs), f"lower bounds only: {reqs}"
    assert sorted(project["dependencies"]) == sorted(reqs), "pyproject.toml's dependencies differ from requirements.txt"


def test_optional_extras_name_the_lazy_imports():
    """Each extra's purpose is checked where it matters: ``distributed`` names ray (imported only inside functions
    of batch/), ``train`` names scikit-image (imported only inside training/cli.py's sample-photos command)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = {name: {dist_name(r) for r in rs} for name, rs in project["optional-dependencies"].items()}
    assert "ray" in extras["distributed"] and "scikit-image" in extras["train"]
    lazy = third_party_dists(runtime_imports(lazy=True))
    eager = third_party_dists(runtime_imports(lazy=False))
    assert "ray" in lazy and "ray" not in eager, "ray must stay a lazy import (batch.py --ray only)"
    assert "scikit-image" in lazy and "scikit-image" not in eager, "scikit-image must stay a lazy import"


def test_pyiqa_and_training_tools_are_not_runtime_requirements():
    """pyiqa (and its long list of dependencies) is the tests' reference only; diffusers is not imported at all."""
    declared = {dist_name(r) for r in requirement_lines(REPO / "requirements.txt")}
    assert not declared & {"pyiqa", "diffusers", "einops", "pytest", "transformers", "opencv-python"}
    assert "pyiqa" in {dist_name(r) for r in requirement_lines(REPO / "tests" / "requirements.txt")}


# ------------------------------------------------------------------------------------------- pip's resolver


def host_requirements(version: str, tmp: Path) -> Path:
    if version == "0.3.75":
        from tests.support.comfy_host import comfyui_path

        path = comfyui_path() / "requirements.txt"
        if not path.is_file() or "0.3.75" not in (comfyui_path() / "comfyui_version.py").read_text():
            pytest.skip(f"ComfyUI 0.3.75 (scripts/setup.sh) not found at {comfyui_path()}")
        return path
    archive = SHARED_HOSTS / f"comfyui-{version}.tar.gz"
    if not archive.is_file():
        pytest.skip(f"ComfyUI {version}'s source is not here ({archive} is absent: only CI and developers' machines "
                    f"have ../shared/hosts)")
    with tarfile.open(archive) as tar:
        data = tar.extractfile("ComfyUI/requirements.txt").read()
    path = tmp / f"comfyui-{version}-requirements.txt"
    path.write_bytes(data)
    return path


def torch_pins() -> list[str]:
    """The installed torch (and torchvision) as pins: a pack never moves the user's torch."""
    pins = []
    for dist in ("torch", "torchvision"):
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return pins


def pip_resolve(requirements: list[Path], pins: list[str], tmp: Path, label: str) -> tuple[dict[str, str], str]:
    """pip's resolution of ``requirements`` under ``pins`` (fresh environment): ({name: version}, pip's output)."""
    constraints = tmp / f"{label}-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    report = tmp / f"{label}-report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--prefer-binary",
           "--disable-pip-version-check", "--quiet", "--report", str(report), "-c", str(constraints)]
    for r in requirements:
        cmd += ["-r", str(r)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = "\n".join(ln for ln in (proc.stdout + proc.stderr).splitlines()
                       if not (ln.startswith("WARNING: Location") and "is ignored" in ln))  # empty local index dirs
    if proc.returncode != 0:
        return {}, output
    data = json.loads(report.read_text())
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in data["install"]}, output


def check_requirements_join(host_reqs: Path, ours: Path, tmp: Path) -> dict[str, str]:
    """Fails unless installing ``ours`` next to ComfyUI's resolution changes nothing of it; returns what it adds."""
    alone, out = pip_resolve([host_reqs], torch_pins(), tmp, "host")
    if not alone:
        pytest.skip(f"pip could not resolve ComfyUI's own requirements (is the package index reachable?):\n{out[-2000:]}")
    # ComfyUI's environment as pins: ours must resolve inside it (anything else is an upgrade or a downgrade)
    pins = [f"{name}=={version}" for name, version in sorted(alone.items())]
    joined, out = pip_resolve([ours], pins, tmp, "joined")
    assert joined, (f"{ours.name} cannot be installed next to ComfyUI's packages ({host_reqs}) without changing "
                    f"their versions; pip says:\n{out[-3000:]}")
    assert all(alone[n] == v for n, v in joined.items() if n in alone)  # pinned: else a resolver bug
    added = {n: v for n, v in joined.items() if n not in alone}
    declared = {dist_name(r) for r in requirement_lines(ours)}
    assert set(added) <= declared, (f"installing {ours.name} into ComfyUI's environment would add "
                                    f"{sorted(set(added) - declared)} beyond the pack's own requirements "
                                    f"({sorted(declared)})")
    return added


HOSTS = ["0.3.75", "0.12.1"]


@pytest.fixture(scope="module")
def joins(tmp_path_factory):
    """Both hosts' checks run side by side (pip mostly waits on the index): version -> added packages, or the
    exception (skip or failure) to re-raise in that host's test."""
    from concurrent.futures import ThreadPoolExecutor

    tmps = {version: tmp_path_factory.mktemp(f"pip-{version}") for version in HOSTS}  # not from the threads

    def one(version):
        try:
            return check_requirements_join(host_requirements(version, tmps[version]), REPO / "requirements.txt",
                                           tmps[version])
        except BaseException as e:  # noqa: BLE001 - pytest's skip/fail outcomes included, re-raised per test
            return e

    with ThreadPoolExecutor(len(HOSTS)) as pool:
        return dict(zip(HOSTS, pool.map(one, HOSTS)))


@pytest.mark.index
@pytest.mark.slow
@pytest.mark.parametrize("host_version", HOSTS)
def test_pip_resolver_changes_nothing_in_comfyuis_environment(host_version, joins):
    added = joins[host_version]
    if isinstance(added, BaseException):
        raise added
    print(f"ComfyUI {host_version}: requirements.txt adds {added or 'nothing'} and changes no version")
