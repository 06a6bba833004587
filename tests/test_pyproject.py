"""pyproject.toml carries what the Comfy registry reads (comfy-cli's `comfy node validate` / `comfy node publish`).

The rules are the registry's specification (docs.comfy.org/registry/specifications) as comfy-cli applies them: the
node id's characters, a three-number version, a licence file, the URLs comfy-cli reads (Homepage, Documentation,
Repository, Issues), OS classifiers with the prefixes it accepts, accelerator classifiers only from its list (one
unknown "Environment ::" classifier and it drops them all), and `requires-comfyui` in its version syntax.
"""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT, COMFY = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                         "GPU :: Apple Metal"}
REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
COMFY_VERSION = r"(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?"


def test_project_identity():
    name = PROJECT["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", name), name
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    assert PROJECT["description"].strip()
    assert (REPO / PROJECT["license"]["file"]).is_file()
    assert (REPO / PROJECT["readme"]).is_file()


def test_urls_for_the_registry_page():
    urls = PROJECT["urls"]
    for key in ("Repository", "Homepage", "Documentation", "Issues"):  # the keys comfy-cli reads
        assert re.fullmatch(r"https://\S+", urls.get(key, "")), f"[project.urls] {key}"
    assert urls["Issues"].rstrip("/").endswith("/issues")
    assert urls["Repository"] in urls["Documentation"]


def test_classifiers_do_not_claim_cuda_only():
    classifiers = PROJECT["classifiers"]
    os_values = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System ::")]
    assert os_values == ["OS Independent"]
    accelerators = {c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")}
    assert accelerators <= REGISTRY_ACCELERATORS, accelerators - REGISTRY_ACCELERATORS
    assert "GPU :: NVIDIA CUDA" in accelerators and len(accelerators) > 1, "the pack runs on ComfyUI's device choice"


def test_tool_comfy_is_complete():
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", COMFY["PublisherId"])
    assert COMFY["DisplayName"].strip()
    assert all(re.fullmatch(COMFY_VERSION, part.strip()) for part in COMFY["requires-comfyui"].split(","))
    assert COMFY["requires-comfyui"] == ">=0.3.75"  # the oldest host the tests run on (scripts/setup.sh)
    assert isinstance(COMFY.get("includes", []), list)
    assert all(re.fullmatch(r"https://\S+\.(svg|png|jpe?g|gif)", COMFY[k]) for k in ("Icon", "Banner") if k in COMFY)
