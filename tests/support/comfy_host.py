"""A real ComfyUI host for the tests, in-process (once per session) and as a server subprocess.

The host is ComfyUI 0.3.75 from ``.cache/comfyui-0.3.75`` (made by scripts/setup.sh), or the checkout named by
the ``COMFYUI_PATH`` environment variable. The pack and the test-only nodes are loaded through ComfyUI's own
custom-node loader from a temporary ``custom_nodes`` folder that links to them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "ComfyUI-AdaptBIR"
TEST_NODES_DIR = REPO / "tests" / "comfy_test_nodes"


def comfyui_path() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    path = Path(env) if env else REPO / ".cache" / "comfyui-0.3.75"
    if not (path / "main.py").is_file():
        raise RuntimeError(f"ComfyUI host not found at {path}: run scripts/setup.sh or set COMFYUI_PATH")
    return path


def make_custom_nodes_dir(root: Path) -> Path:
    """A custom_nodes folder holding links to the pack and to the test-only nodes."""
    cn = root / "custom_nodes"
    cn.mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_DIR_NAME, REPO), ("adaptbir_test_nodes", TEST_NODES_DIR)):
        link = cn / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return cn


class _StubServer:
    """The parts of PromptServer that the executor and nodes use, recording what they send."""

    def __init__(self):
        from aiohttp import web

        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.routes = web.RouteTableDef()
        self.messages: list[tuple[str, object]] = []
        self.progress_text: list[tuple[str, str]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.progress_text.append((node_id, text))

    def queue_updated(self):
        pass


class ExecutionFailed(Exception):
    def __init__(self, messages):
        self.messages = messages
        err = next((d for e, d in messages if e == "execution_error"), None)
        self.node_type = err.get("node_type") if err else None
        self.exception_type = err.get("exception_type") if err else None
        self.exception_message = err.get("exception_message", "") if err else ""
        super().__init__(f"{self.node_type}: {self.exception_type}: {self.exception_message}")


class InProcessHost:
    """ComfyUI imported into this process, with the pack loaded by ComfyUI's loader."""

    def __init__(self, workdir: Path, extra_args=()):
        self.workdir = Path(workdir)
        self.path = comfyui_path()
        sys.argv = ["main.py", "--cpu", "--preview-method", "none", "--output-directory",
                    str(self.workdir / "output"), "--input-directory", str(self.workdir / "input"), *extra_args]
        if str(self.path) not in sys.path:
            sys.path.insert(0, str(self.path))
        import comfy.options

        comfy.options.enable_args_parsing()
        import folder_paths

        (self.workdir / "output").mkdir(parents=True, exist_ok=True)
        (self.workdir / "input").mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(self.workdir / "output"))
        folder_paths.set_input_directory(str(self.workdir / "input"))
        self.models_dir = self.workdir / "models"
        import utils.extra_config  # noqa: F401  (must precede `nodes`, see comfyui-host.md §8.2)
        import execution
        import nodes
        import server

        self.nodes = nodes
        self.execution = execution
        self.server = _StubServer()
        server.PromptServer.instance = self.server
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        cn = make_custom_nodes_dir(self.workdir)
        for name in (PACK_DIR_NAME, "adaptbir_test_nodes"):
            ok = asyncio.run(nodes.load_custom_node(str(cn / name)))
            if not ok:
                raise RuntimeError(f"ComfyUI failed to load custom node folder {name}")
        # the pack registered its folders under ComfyUI's models dir; tests use their own models dir first
        self.pack_module_name = str(cn / PACK_DIR_NAME).replace(".", "_x_")
        self.pack = sys.modules[self.pack_module_name]
        for key in sys.modules[self.pack_module_name + ".nodes.paths"].PACK_FOLDERS:
            d = self.models_dir / key
            d.mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path(key, str(d), is_default=True)

    def node_class(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def validate(self, prompt: dict):
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict, *, executor=None):
        """Validate and execute an API-format prompt; return {node_id: outputs tuple} of every output node.

        Raises AssertionError on a validation failure and ExecutionFailed when a node raised.
        """
        CacheType = self.execution.CacheType
        valid, error, outputs, node_errors = self.validate(prompt)
        if not valid:
            raise AssertionError(f"prompt did not validate: {error} {node_errors}")
        ex = executor or self.execution.PromptExecutor(self.server, cache_type=CacheType.CLASSIC,
                                                       cache_args={"lru": 0, "ram": 0})
        self.server.messages = []
        ex.execute(prompt, str(uuid.uuid4()), {}, outputs)
        if not ex.success:
            raise ExecutionFailed(list(ex.status_messages))
        self.last_executor = ex
        return ex

    @staticmethod
    def output(ex, node_id: str, index: int = 0):
        """The Python value of output ``index`` of ``node_id`` after a run (first item of its list)."""
        entry = ex.caches.outputs.get(node_id)
        outs = entry.outputs if hasattr(entry, "outputs") else entry
        return outs[index][0]

    @staticmethod
    def ui(ex, node_id: str):
        return ex.history_result["outputs"].get(node_id)
