"""A stand-in ``folder_paths`` that behaves like a pip-installable ComfyUI fork's: one model-folder registry per
execution context, and live views of it.

* ``folder_names_and_paths`` answers for the registry of the current context (a ``contextvars.ContextVar``, so
  asyncio tasks started inside a context see it too).
* Reading an entry returns the registry's own list and set (live views), not copies.
* Writing an entry rewrites the stored list in place: it is cleared, then refilled from the value given. Writing
  an entry's own live list back therefore empties it, which is what the fork does.
* :meth:`ForkFolderPaths.execution_context` starts a context whose registry is built afresh from the host's own
  configuration (the built-in folders), so folders a custom node registered at import are not there.

Only the functions the pack calls exist. Files are listed from disk on every call (no cache).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import MutableMapping
from pathlib import Path

PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


class _Registry:
    def __init__(self, entries: dict):
        self.paths = {k: list(v[0]) for k, v in entries.items()}
        self.exts = {k: set(v[1]) for k, v in entries.items()}


class _FolderTable(MutableMapping):
    """``folder_names_and_paths`` of the current context: live views on read, in-place rewrite on write."""

    def __init__(self, owner: "ForkFolderPaths"):
        self._owner = owner

    def _reg(self) -> _Registry:
        return self._owner._current.get()

    def __getitem__(self, key):
        reg = self._reg()
        return (reg.paths[key], reg.exts[key])

    def __setitem__(self, key, value):
        paths, exts = value
        reg = self._reg()
        self._owner.writes.append(key)
        live = reg.paths.setdefault(key, [])
        live.clear()
        live.extend(paths)  # when ``paths`` is ``live`` itself, it is empty by now
        live_exts = reg.exts.setdefault(key, set())
        new_exts = set(exts)
        live_exts.clear()
        live_exts.update(new_exts)

    def __delitem__(self, key):
        reg = self._reg()
        del reg.paths[key], reg.exts[key]

    def __iter__(self):
        return iter(list(self._reg().paths))

    def __len__(self):
        return len(self._reg().paths)


class ForkFolderPaths:
    """Module-like object to install as ``sys.modules["folder_paths"]``; ``models_dir`` is a real directory."""

    def __init__(self, models_dir: Path):
        self.models_dir = str(models_dir)
        self.writes: list[str] = []  # keys written through folder_names_and_paths, in order
        self._builtin = {k: ([os.path.join(self.models_dir, k)], PT_EXTENSIONS) for k in ("checkpoints", "loras")}
        self._current = contextvars.ContextVar("fork_folder_registry", default=_Registry(self._builtin))
        self.folder_names_and_paths = _FolderTable(self)
        self.supported_pt_extensions = set(PT_EXTENSIONS)

    @contextlib.contextmanager
    def execution_context(self):
        """A new execution context: a registry with the built-in folders only, until the block ends."""
        token = self._current.set(_Registry(self._builtin))
        try:
            yield
        finally:
            self._current.reset(token)

    def add_model_folder_path(self, folder_name, full_folder_path, is_default=False):
        reg = self._current.get()
        paths = reg.paths.setdefault(folder_name, [])
        reg.exts.setdefault(folder_name, set())
        if full_folder_path in paths:
            paths.remove(full_folder_path)
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_folder_paths(self, folder_name):
        return list(self._current.get().paths[folder_name])

    def get_full_path(self, folder_name, filename):
        reg = self._current.get()
        if folder_name not in reg.paths:
            return None
        for d in reg.paths[folder_name]:
            path = os.path.join(d, filename)
            if os.path.isfile(path):
                return path
        return None

    def get_filename_list(self, folder_name):
        reg = self._current.get()
        dirs, exts = reg.paths[folder_name], reg.exts[folder_name]  # KeyError for an unknown folder, as upstream
        out = []
        for d in dirs:
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    if os.path.isfile(os.path.join(d, name)) and (not exts or os.path.splitext(name)[1] in exts):
                        out.append(name)
        return out
