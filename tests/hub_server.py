"""A Hugging Face Hub-compatible server on loopback: ``olah`` serving local git repositories, no network.

Each repo is a git repository whose branch is ``main`` at ``<root>/models/<org>/<name>``. With
``HF_ENDPOINT`` (or ``huggingface_hub.constants.ENDPOINT``) set to :attr:`OlahServer.endpoint`,
``hf_hub_download``, ``snapshot_download``, ``model_info(revision="main")`` and ``ModelCard.load`` work
against it; ``model_info`` without a revision and upload calls do not.

Example::

    >>> with OlahServer(tmp_path) as server:
    ...     server.add_repo("biotorch/lenet_fa.fashion_mnist", card_folder)
    ...     hf_hub_download(..., endpoint=server.endpoint)
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str | None:
    """``name`` on PATH, else beside this interpreter: the bin/ of a virtualenv run without activating it
    (``venv/bin/python -m pytest``), where pip put ``olah-cli``."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def _git(*args: str, cwd: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "biotorch tests", "GIT_AUTHOR_EMAIL": "tests@biotorch.invalid",
           "GIT_COMMITTER_NAME": "biotorch tests", "GIT_COMMITTER_EMAIL": "tests@biotorch.invalid"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


class OlahServer:
    """``olah-cli`` on 127.0.0.1 with offline mirrors under ``root``; a context manager."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return tool("olah-cli") is not None and tool("git") is not None

    def add_repo(self, repo_id: str, folder: Path) -> str:
        """Commit ``folder``'s files as ``repo_id`` on branch main; returns the commit sha."""
        repo = self.mirrors / "models" / repo_id
        shutil.copytree(folder, repo)
        _git("init", "-q", "-b", "main", cwd=repo)
        _git("add", "-A", cwd=repo)
        _git("commit", "-q", "-m", f"Add {repo_id}", cwd=repo)
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                              text=True).stdout.strip()

    def start(self, timeout: float = 30.0) -> "OlahServer":
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        config.write_text(f"""[basic]
host = "127.0.0.1"
port = {self.port}
mirror-netloc = "127.0.0.1:{self.port}"
mirror-lfs-netloc = "127.0.0.1:{self.port}"
mirrors-path = ["{self.mirrors}"]
repos-path = "{self.root / 'repos'}"

[accessibility]
offline = true
""")
        self.log = open(self.root / "olah.log", "wb")
        # cwd: olah writes its logs/ folder into the working directory.
        self.process = subprocess.Popen([tool("olah-cli"), "-c", str(config)], cwd=self.root, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"olah did not answer on port {self.port} within {timeout:.0f}s:\n"
                           + (self.root / "olah.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self.log.close()

    def __enter__(self) -> "OlahServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
