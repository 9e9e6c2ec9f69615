"""Writing files that are never seen half-written, JSON without NaN, and file hashes.

Every file biotorch writes (weights, configs, cards, records, checkpoints) goes through
:func:`atomic_write`: the bytes go to a temporary file in the same folder, are flushed to disk, and the
file is renamed over the target, so a crash leaves the old file or the new one, never a mixture.

Example::

    >>> write_json("runs/x/metrics.json", {"top1": float("nan")})     # written as {"top1": null}
    >>> sha256("model_cards/lenet_fa.fashion_mnist/model.safetensors")[:12]
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from .errors import ConfigError, RunLockedError

PathLike = Union[str, os.PathLike]
REPO_ROOT = Path(__file__).resolve().parent.parent  # a clone's root (model_cards/, recipes/, samples/)
SAMPLES = REPO_ROOT / "samples"  # sample test images shipped in the repository, one folder per dataset


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: PathLike, write: Callable[[str], None], mode: Optional[int] = None) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``; returns ``path``.

    The file gets ``mode``, by default what ``open`` would give a new file (0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)  # mkstemp makes private (0600) files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def previous_folder(folder: Path) -> Path:
    """Where :func:`replace_folder` keeps ``folder``'s previous version while it swaps: ``.<name>.old`` beside it."""
    return folder.with_name(f".{folder.name}.old")


def replace_folder(staging: Path, folder: Path) -> Path:
    """Put the complete folder ``staging`` at ``folder`` by renames; returns ``folder``. The previous ``folder`` is
    moved to :func:`previous_folder` first and removed last, so a crash leaves one of the two whole."""
    old = previous_folder(folder)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def restore_folder(folder: Path) -> Path:
    """Undo a :func:`replace_folder` stopped between its renames: a missing ``folder`` gets its previous version
    back from :func:`previous_folder`; returns ``folder``."""
    old = previous_folder(folder)
    if old.is_dir() and not folder.exists():
        os.replace(old, folder)
    return folder


def write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def finite(value):
    """JSON has no NaN: non-finite floats become null (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: PathLike, value) -> Path:
    return write_text(path, json.dumps(finite(value), indent=2) + "\n")


def sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _NoAliases(yaml.SafeLoader):
    """yaml's safe loader without aliases: no YAML of ours needs them, and a few nested aliases expand
    exponentially (a 289-byte "billion laughs" exhausts memory)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"{self.where} may not use YAML aliases (*name), found one at line {mark.line + 1}")
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str = "a YAML file") -> Any:
    """YAML text as plain data, the one way every YAML file of the project is read (recipes, run folders, the
    campaign's queue): the safe loader, aliases refused with a :class:`ConfigError` naming ``where``; a syntax
    error is a ``yaml.YAMLError``."""
    loader = _NoAliases(text)
    loader.where = where
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class FolderLock:
    """An exclusive OS lock (``flock``) on a folder, the file ``<folder>/.lock``, which is never opened through a
    link; it names its holder (pid and host), and the OS releases it when the process ends, so a crash never
    leaves it held. ``wait``: wait for the holder to finish (publishing into a cards folder); else refuse at once,
    naming the holder (a run folder, :class:`biotorch.training.checkpoint.RunLock`).

    Example::

        >>> with FolderLock("model_cards", wait=True):
        ...     ...                                  # cards, index and README written by this process only
    """

    busy = "one process writes it at a time"

    def __init__(self, folder: PathLike, wait: bool = False):
        self.path, self.wait, self.file = Path(folder) / LOCK, wait, None

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: the lock file is truncated and written below
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise ConfigError(f"{self.path} is a link or not a file ({error.strerror}): a folder's lock is "
                              "biotorch's own file; remove it") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{self.path} is not a file: a folder's lock is biotorch's own file; remove it")
        self.file = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise RunLockedError(f"{self.path.parent} is in use by {owner}: {self.busy}") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.file.flush()
        return self

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


LOCK = ".lock"  # the lock file of a run folder or a cards folder
