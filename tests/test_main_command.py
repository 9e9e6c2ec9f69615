"""The README's main command: a bundled checkpoint evaluated on the sample images shipped in the repo."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

import biotorch

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples" / "fashion_mnist"


def test_readme_main_command_evaluates_the_bundled_checkpoint_on_the_samples(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    command = re.search(r"&& (biotorch eval \S+)", readme).group(1).split()
    name = command[2]
    assert name in biotorch.list_models(pretrained=True), f"{name} is not bundled in model_cards/"

    # the CLI, offline, with no dataset in its search path: it must fall back to the shipped samples
    env = {"HF_HUB_OFFLINE": "1", "BIOTORCH_DATA": str(tmp_path), "HOME": str(tmp_path), "PATH": ""}
    done = subprocess.run([sys.executable, "-m", "biotorch", *command[1:], "--json"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["images"] == 100 and "samples" in result["split"]

    # the same number, independently: PIL images through the checkpoint's own eval transform
    model = biotorch.create_model(name, pretrained=True).eval()
    transform = biotorch.data.transforms(model)
    rows = list(csv.DictReader((SAMPLES / "labels.csv").open()))
    batch = torch.stack([transform(Image.open(SAMPLES / r["file"])) for r in rows])
    labels = torch.tensor([int(r["label"]) for r in rows])
    with torch.no_grad():
        top1 = (model(batch).argmax(1) == labels).float().mean().item() * 100
    assert abs(result["top1"] - top1) < 1e-4  # percentages summed in float32
    assert top1 > 60  # a trained model, not chance
