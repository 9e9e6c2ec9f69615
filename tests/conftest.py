"""Shared fixtures: finished training runs written the way ``biotorch train`` writes them, in seconds."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torchvision.transforms.functional import to_pil_image

import biotorch
from biotorch import cli
from biotorch.hub import file_record, save_weights

# The smallest valid PNG (1×1, grey): stands in for a run's plots where the test does not look at them.
TINY_PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
                         "0000000a49444154789c636800000082008177cd72b60000000049454e44ae426082")


def encoded(pixels: torch.Tensor, format: str = "PNG", **options) -> bytes:
    """A uint8 (C, H, W) image encoded as a file's bytes (PNG, or JPEG with ``quality=``), by Pillow."""
    buffer = io.BytesIO()
    to_pil_image(pixels).save(buffer, format=format, **options)
    return buffer.getvalue()


def raw_png(width: int, height: int, rows: bytes, colour: int = 2, depth: int = 16) -> bytes:
    """A PNG written byte by byte, for what Pillow does not write (16-bit RGB, a header that lies about its size):
    ``rows`` are the image's filtered scanlines (a 0 byte, then big-endian samples, per row)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def shape_mask(c: int, dy: torch.Tensor, dx: torch.Tensor, r: int) -> torch.Tensor:
    """Class ``c``'s shape around the offsets ``dy``, ``dx`` from its centre, radius ``r``: a disc, a cross, a square
    outline, a triangle."""
    ay, ax = dy.abs(), dx.abs()
    return [(ay ** 2 + ax ** 2) <= r * r, ((ay <= r // 4) & (ax <= r)) | ((ax <= r // 4) & (ay <= r)),
            (torch.maximum(ay, ax) <= r) & (torch.maximum(ay, ax) >= r - 2),
            (ay <= r) & (2 * ax <= dy + r)][c % 4]


def make_imagefolder(root: Path, per_class: int = 12, size: int = 48, splits=("train", "test"),
                     classes=("circle", "cross", "square")) -> Path:
    """A user's folder of RGB PNGs, ``<root>/<split>/<class>/<n>.png``: each class a bright shape (a disc, a cross, a
    square outline) at a random place on dark noise, in a random colour, so a model can learn them."""
    g = torch.Generator().manual_seed(len(splits) * 1000 + size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for split in splits:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                cy, cx = (torch.randint(size // 3, 2 * size // 3, (2,), generator=g)).tolist()
                shape = shape_mask(c, yy - cy, xx - cx, size // 5)
                colour = 0.6 + 0.4 * torch.rand(3, 1, 1, generator=g)
                image = 0.15 * torch.rand(3, size, size, generator=g) + shape.float() * colour
                pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
                (root / split / name / f"{n:03d}.png").write_bytes(encoded(pixels))
    return root


SHAPE_SIZES = ((32, 60), (48, 48), (64, 80), (80, 64), (100, 100))  # (height, width)


def make_shapes_folder(root: Path, seed: int, train: int = 60, test: int = 20) -> Path:
    """A user's folder as issue 48 drew it: 4 classes of shapes (disc, cross, square outline, triangle), ``train`` +
    ``test`` PNGs per class and no ``val/``, in 5 sizes from 32×60 to 100×100, about a quarter in grayscale and one
    RGBA; the shape's size and place, its colour and the background noise vary with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    classes = ("circle", "cross", "square", "triangle")
    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for n in range(count):
                h, w = SHAPE_SIZES[(n + c) % len(SHAPE_SIZES)]
                side = min(h, w)
                r = int(side * (0.25 + 0.1 * torch.rand((), generator=g)))
                # inside the central square, which a centre crop keeps
                cy, cx = (int(torch.randint(d // 2 - side // 2 + r, d // 2 + side // 2 - r + 1, (), generator=g))
                          for d in (h, w))
                yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                colour = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=g)
                image = 0.2 * torch.rand(3, h, w, generator=g) + shape_mask(c, yy - cy, xx - cx, r).float() * colour
                pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
                if (n + 2 * c) % 7 < 2:  # 2 in 7 grayscale
                    pixels = pixels[:1]
                path = root / split / name / f"{n:03d}.png"
                if split == "train" and n == c == 0:  # one RGBA
                    to_pil_image(pixels).convert("RGBA").save(path)
                else:
                    path.write_bytes(encoded(pixels))
    return root


def write_run(folder: Path, arch: str = "lenet", rule: str = "fa", dataset: str = "fashion_mnist", seed: int = 0,
              val_top1: float = 80.0, test_top1: float = 79.0, plots: bool = True, started_from: dict | None = None,
              **recipe) -> Path:
    """A finished run folder with the trainer's files; the weights are a fresh model of ``seed``.

    ``started_from``: a fine-tuned run's ``biotorch.init_from`` record (its ``source`` becomes ``init_from``)."""
    info = biotorch.data.DATASETS[dataset]
    torch.manual_seed(seed)
    model = biotorch.create_model(f"{arch}_{rule}", num_classes=info.num_classes, in_chans=info.in_chans, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "best.safetensors")
    recipe = {"model": arch, "data": dataset, "epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05,
              "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "augment": "none", "rule": rule,
              "rule_options": {}, "seed": seed, **recipe}
    if started_from is not None:
        recipe["init_from"] = started_from["source"]
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    forward, feedback = biotorch.metrics.count_parameters(model)
    metrics = {"model": f"{arch}_{rule}", "arch": arch, "rule": rule, "dataset": dataset, "seed": seed, "epochs": 2,
               "best_epoch": 2, "val_top1": val_top1, "test_top1": test_top1, "test_top5": 99.0, "test_loss": 0.5,
               "train_time_s": 3.0, "images_per_s": 1000.0, "params_forward": forward, "params_feedback": feedback,
               "device": "cpu", "world_size": 1, "biotorch_version": biotorch.__version__, "recipe": recipe,
               "init_from": started_from}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (folder / "config.json").write_text(json.dumps(  # as the trainer does at the end of a run
        {**model.biotorch_config, "files": {"best.safetensors": file_record(folder / "best.safetensors")}}, indent=2))
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_top1": 50.0 + e, "val_loss": 1.1 / e, "lr": 0.05 / e,
                "val_top1": None if val_top1 is None else val_top1 - 2 + e, "epoch_time_s": 1.5} for e in (1, 2)]
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "history.csv").write_text("epoch,train_loss,train_top1,val_loss,val_top1,lr,epoch_time_s\n" + "".join(
        ",".join(str(row[k]) for k in row) + "\n" for row in history))
    layers = {"conv1": {"rule": rule, "angle": 60.0, "norm_ratio": 1.0, "gradient_cosine": 0.5}}
    (folder / "alignment.json").write_text(json.dumps([{"epoch": e, "layers": layers} for e in (1, 2)]))
    if plots:
        (folder / "curves.png").write_bytes(TINY_PNG)
        (folder / "alignment.png").write_bytes(TINY_PNG)
    return folder


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Tests that make runs deterministic or single-threaded leave the process as they found it."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture
def make_run(tmp_path):
    """``make_run(seed=1, val_top1=..., ...)`` → a run folder under ``tmp_path/runs``."""

    def make(name: str | None = None, **kwargs) -> Path:
        kwargs.setdefault("seed", 0)
        key = f"{kwargs.get('arch', 'lenet')}_{kwargs.get('rule', 'fa')}.{kwargs.get('dataset', 'fashion_mnist')}"
        return write_run(tmp_path / "runs" / (name or f"{key}-seed{kwargs['seed']}"), **kwargs)

    return make


def same_tensors(file_a, file_b) -> list:
    """The names of the tensors that differ between two safetensors files (which must hold the same names)."""
    a, b = load_file(str(file_a)), load_file(str(file_b))
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (registered, so its dataclasses work)."""
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))  # as when the script runs: its folder is importable
    if name not in sys.modules:
        path = scripts / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def kill_and_resume(argv: list[str], run: Path, epochs: int) -> str:
    """Start ``biotorch <argv> --out run`` in a real process, kill it once its first checkpoint is written,
    resume it in this process with ``--resume`` (one thread, as the killed process and the in-process reference
    have) and return what the resumed run printed."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "biotorch", *argv, "--out", str(run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state, deadline = run / "checkpoint" / "state.json", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if json.loads(state.read_text())["epoch"] >= 1:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
    finally:
        process.kill()
        process.wait()
    stopped_after = json.loads(state.read_text())["epoch"]
    assert 1 <= stopped_after < epochs and not (run / "metrics.json").exists()
    torch.set_num_threads(1)  # restored after the test (_restore_torch_globals)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"resumed from {run / 'checkpoint'} after epoch {stopped_after}" in printed.getvalue()
    return printed.getvalue()


def missing_tool(message: str) -> None:
    """A test's tool is not installed: skip it on a developer's machine, fail it in CI (CI=true), where the
    README's install command (``pip install -e ".[dev]"``) provides every tool."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing tool fails)")
    pytest.skip(message)


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    """A Hub on loopback that takes pushes: olah serves its mirrors (and accepts no uploads), so the real client's
    ``HfApi.create_repo``/``upload_folder`` calls commit what would be uploaded into a mirror repo instead, which
    olah then serves to ``hf_hub_download``, ``from_pretrained("hf-hub:...")`` and timm like any Hub repo. The
    fixture's ``pushed`` is the folder holding the pushed repos (``pushed / owner / name``)."""
    from huggingface_hub import HfApi, constants
    from hub_server import OlahServer

    if not OlahServer.available():
        missing_tool("olah-cli (pip install olah==0.5.4) and git are needed for the loopback Hub server")
    server = OlahServer(tmp_path / "olah")

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        if (server.mirrors / "models" / repo_id).exists():
            raise AssertionError(f"{repo_id} pushed twice in one test")
        return f"{server.endpoint}/{repo_id}/commit/{server.add_repo(repo_id, Path(folder_path))}"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    with server:
        url = server.endpoint
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        server.pushed = server.mirrors / "models"
        yield server
