"""The README's tour and its "Your own images" walk-through run as written, so they cannot rot.

Every fenced block of those sections runs in a fresh folder holding a generated ``my_images/`` (3 classes of RGB
PNGs) and a copy of ``hubconf.py`` (the tour's ``torch.hub.load(".", ...)`` is run in a clone): Python blocks with
``exec``, each ``biotorch ...`` line of a bash block through the CLI's ``main`` (exit status 0). Pushes go to the
loopback Hub. Not run: the ``train --recipe``/``--resume`` and ``torchrun`` lines of the tour, which need the
Fashion-MNIST and CIFAR files (tests never read ``../shared``) and GPUs.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from biotorch import cli
from biotorch.files import REPO_ROOT
from conftest import make_imagefolder

README = REPO_ROOT / "README.md"
NEEDS_DATASETS = ("biotorch train --recipe", "biotorch train --resume", "torchrun ")


def blocks(start: str, end: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks between the headings ``start`` and ``end``."""
    text = README.read_text()
    begin = text.index(start)
    section = text[begin:text.index(end, begin + len(start))]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def run_blocks(found: list[tuple[str, str]], capsys) -> int:
    ran = 0
    for language, code in found:
        if language == "python":
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
            ran += 1
            continue
        assert language == "bash", language
        for line in code.splitlines():
            if not line.strip() or line.startswith("#") or line.startswith(NEEDS_DATASETS):
                continue
            argv = shlex.split(line, comments=True)
            assert argv[0] == "biotorch", line
            capsys.readouterr()
            code_ = cli.main(argv[1:])
            assert code_ == 0, f"{line}\n{capsys.readouterr().err}"
            ran += 1
    return ran


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "my_images")
    shutil.copy(REPO_ROOT / "hubconf.py", tmp_path / "hubconf.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIOTORCH_DATA", str(tmp_path / "no-data"))  # the samples shipped in the repo, not the
    monkeypatch.setenv("BIOTORCH_CACHE", str(tmp_path / "cache"))   # datasets a developer's machine may hold
    return tmp_path


def test_the_tour_runs_as_written(workdir, capsys, loopback_hub):
    ran = run_blocks(blocks("## A tour", "## timm"), capsys)
    assert ran >= 6  # the Python block and the list, info, eval, robustness and info-on-a-folder lines
    assert (loopback_hub.pushed / "me" / "my_model" / "config.json").is_file()


def test_your_own_images_runs_as_written(workdir, capsys, loopback_hub):
    ran = run_blocks(blocks("### Your own images", "###"), capsys)
    assert ran == 6  # five commands and the Python block
    assert (workdir / "runs" / "my-shapes" / "metrics.json").is_file()
    assert {p.name for p in (loopback_hub.pushed / "me").iterdir()} == {"lenet_fa-shapes", "my-shapes"}
