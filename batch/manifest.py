"""The state a batch run keeps in its output folder: a lock (one run per output folder) and a manifest (each
input's state), plus the atomic write of an output file.

* ``.batch.lock``: held with an OS file lock while a run writes into the folder, so a second run refuses to start;
  the OS releases it when the process dies (no stale lock after a crash), and the file is removed at the end.
* ``batch-manifest.jsonl``: one JSON object per line, ``{"input", "state", "output", "message", "worker",
  "seconds", "worker_deaths"}`` with ``state`` one of ``done``, ``failed`` (``message`` says why) or ``skipped`` (its
  output was already there). During a run a line is appended (and flushed to disk) as each image finishes, so a
  crash loses nothing; at the end the file is rewritten with one line per input of the folder.
"""

from __future__ import annotations

import json
import os
import socket
import time

from .workflow import WorkflowError

LOCK_NAME = ".batch.lock"
MANIFEST_NAME = "batch-manifest.jsonl"
STATES = ("done", "failed", "skipped")


def _try_lock(fd: int) -> bool:
    """Lock the open file ``fd`` exclusively without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


class OutputLock:
    """The lock of one output folder: ``acquire()`` raises WorkflowError when another run (this machine or another
    one sharing the folder) holds it; ``release()`` removes the lock file. Also a context manager."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd = None

    def acquire(self) -> OutputLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise WorkflowError(f"output folder: another batch run is writing into {self.folder} ({holder}); "
                                    f"wait for it to end or choose another output folder")
            try:  # the run that held it may have removed the file just before we locked it: lock the file there now
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:  # already gone, or Windows (an open file cannot be removed): the lock still ends below
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_manifest(folder: str) -> dict[str, dict]:
    """``{input name: its last record}`` of the folder's manifest (empty when there is none); a line cut short by
    a crash is ignored."""
    records = {}
    try:
        with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("state") in STATES and "input" in rec:
                    records[rec["input"]] = rec
    except FileNotFoundError:
        pass
    return records


class Manifest:
    """Appends records to ``<folder>/batch-manifest.jsonl`` as images finish; :meth:`close` rewrites it with one
    line per input (the inputs of ``names``, in order)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, MANIFEST_NAME)
        self.records = read_manifest(folder)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (open for the run; close() ends it)

    def record(self, name: str, state: str, *, durable: bool = True, **fields) -> dict:
        """Set the state of input ``name`` (``fields`` with a None value are left out); ``durable`` appends it to
        the file and flushes it to disk now, else it is written by :meth:`close` (the skipped images of a rerun of
        a large folder)."""
        rec = {"input": name, "state": state, **{k: v for k, v in fields.items() if v is not None}}
        self.records[name] = rec
        if durable:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())
        return rec

    def close(self, names: list[str]) -> None:
        """Rewrite the manifest atomically with the last record of each of ``names``."""
        self.file.close()
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for name in names:
                if name in self.records:
                    f.write(json.dumps(self.records[name]) + "\n")
        os.replace(tmp, self.path)


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent or complete (a temporary file next to it, then
    a rename)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
