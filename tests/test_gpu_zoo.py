"""The one-call GPU pipeline (scripts/gpu_zoo.sh, scripts/train_zoo.py), run end to end on the CPU."""
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _ignore(folder, names):
    # the clone's own data/ and runs/ stay behind, not biotorch/data (the package)
    skip = set(shutil.ignore_patterns(".git", "__pycache__", "*.egg-info")(folder, names))
    return skip | ({"data", "runs"} & set(names) if Path(folder) == ROOT else set())
zoo = load_script("train_zoo")


def test_committed_zoo_file_validates_and_every_rule_gets_the_same_grid():
    entries = zoo.read_zoo(ROOT / "recipes" / "zoo.yaml")
    assert entries and all(set(e.rules) == set(zoo.RULES) for e in entries)
    lenet = next(e for e in entries if "lenet" in e.recipe)
    assert lenet.seeds == [0, 1, 2] and zoo.load_recipe(lenet.recipe).epochs >= 100
    grids = {rule: zoo.candidates(lenet, rule) for rule in lenet.rules}
    assert len(grids["fa"]) == len(grids["dfa"]) == 2 * len(grids["bp"]) == 2 * len(grids["usf"])
    assert all("feedback_init" not in c for c in grids["bp"])


def test_zoo_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "zoo.yaml"
    bad.write_text("runs:\n  - recipe: recipes/fashion_mnist/lenet.yaml\n    seed: [0]\n")
    with pytest.raises(ValueError, match="unknown key.*seed"):
        zoo.read_zoo(bad)
    bad.write_text("runs:\n  - recipe: recipes/fashion_mnist/lenet.yaml\n    rules: [fa, fx]\n")
    with pytest.raises(ValueError, match="unknown learning rule 'fx'"):
        zoo.read_zoo(bad)


def test_search_chooses_on_validation_only(tmp_path):
    runs = [dataclasses.replace(_fake(0, "fa", 2, tmp_path), search={"lr_scale": s}) for s in (0.5, 1.0, 2.0)]
    results = [{"val_top1": 80.0, "test_top1": 99.0}, {"val_top1": 85.0, "test_top1": 10.0},
               RuntimeError("diverged")]
    assert zoo.choose(runs, results) == {(0, "fa"): {"lr_scale": 1.0}}


def _fake(entry, rule, nominal, tmp_path):
    recipe = zoo.make_recipe({"model": "lenet", "data": "synthetic", "rule": rule, "epochs": nominal})
    return zoo.Run(tmp_path / f"{rule}{entry}{nominal}", recipe, entry, nominal)


def test_plan_fits_the_budget_and_drops_a_search_that_would_halve_the_runs(tmp_path):
    runs = [_fake(0, "bp", 100, tmp_path), _fake(0, "fa", 100, tmp_path)]
    costs = {(0, "bp"): zoo.Cost(0.01, 0.1, 0.2, 0.5, 100), (0, "fa"): zoo.Cost(0.02, 0.1, 0.2, 0.5, 100)}
    full = sum(zoo.run_seconds(costs[(0, r.recipe.rule)], 100, 1.0) for r in runs)
    fraction, expected, _ = zoo.plan(runs, [], costs, 1.0, full / 2)
    assert expected <= full / 2 and 0.4 < fraction < 0.5        # fixed costs (test, epoch ends) included
    assert zoo.plan(runs, [], costs, 1.0, 2 * full)[0] == 1.0   # never more than the recipe asks
    searches = [_fake(0, "fa", 50, tmp_path)]                  # a search as long as half the runs
    keep = zoo.plan(runs, searches, costs, 1.0, 3 * full)
    drop = zoo.plan(runs, searches, costs, 1.0, 0.5 * full)
    assert keep[2] is True and drop[2] is False and drop[1] <= 0.5 * full
    assert zoo.epochs_for(runs[0], 0.001) == 1


def test_gpu_zoo_script_end_to_end_on_cpu_within_its_budget(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=_ignore)
    # ROBUST_S leaves the attacks ~45 s after twice publish's time (~15 s each on a busy 2-core machine, where
    # every python process spends ~8 s importing torch); 45 s of ROBUST_S left them ~13 s and timed out (exit 124)
    out, budget = tmp_path / "out", 160
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(out), "BUDGET_S": str(budget),
           "ZOO": "tests/fixtures/zoo_tiny.yaml", "PUBLISH_S": "25", "VERIFY_S": "25", "PACK_S": "5",
           "ROBUST_S": "75", "ROBUST_LIMIT": "64",
           "VERIFY_PATTERNS": "*.synthetic", "TRAIN_ARGS": "--calibration-steps 4"}
    start = time.perf_counter()
    done = subprocess.run(["bash", "scripts/gpu_zoo.sh"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=budget + 60)
    elapsed = time.perf_counter() - start
    log = (out / "zoo.log").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert elapsed <= budget + 3, log[-3000:]
    files = list(out.iterdir())
    assert len(files) <= 6 and sum(f.stat().st_size for f in files) <= 24 * 2 ** 20
    assert "PLAN:" in log and ("chosen on validation for fa" in log or "search dropped" in log)
    assert "2/2 checkpoints match their cards on cpu" in log, log[-3000:]
    assert "robustness exit 0" in log and "publish (robustness on the cards) exit 0" in log, log[-3000:]
    parts = sorted(out.glob("cards.tar.gz.part-*"))
    assert parts and all(p.stat().st_size <= 15 * 2 ** 20 for p in parts)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as cards:
        names = cards.getnames()
        metrics = json.load(cards.extractfile("model_cards/lenet_fa.synthetic/metrics.json"))
        readme = cards.extractfile("model_cards/lenet_fa.synthetic/README.md").read().decode()
    # every new card was attacked with the three gradient sources (and their worst case), and its card shows it
    assert {r["gradient"] for r in metrics["robustness"]} == {"exact", "rule", "transfer", "all"}
    assert {r["images"] for r in metrics["robustness"]} == {64} and "## Adversarial robustness" in readme
    assert not any(n.startswith("model_cards/lenet_fa.fashion_mnist") for n in names)  # only this zoo's cards
    assert "model_cards/lenet_fa.synthetic/model.safetensors" in names and "biotorch/pretrained.json" in names
    with tarfile.open(out / "records.tar.gz") as records:
        names = records.getnames()
    assert any(n.endswith("lenet_fa.synthetic-seed1/metrics.json") for n in names)
    if "chosen on validation" in log:  # the search ran (the planner keeps it when there is time)
        assert any("-search/lenet_fa.synthetic-lr_scale" in n for n in names)
    assert not [n for n in names if n.endswith(".safetensors") or "/checkpoint" in n]
