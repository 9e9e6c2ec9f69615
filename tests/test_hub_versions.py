"""The card, publish and Hub code against the lowest huggingface_hub we declare (1.x) as well as the current one.

The current one runs the whole suite. Here the card and Hub tests run again in a subprocess that sees
huggingface_hub 1.0.0 first: ``.ci/run`` installs it into ``.ci/hf1`` (``pip install --no-deps --target``);
elsewhere this test is skipped when that folder is missing, and fails under CI=true.
"""
import os
import subprocess
import sys
from pathlib import Path

from conftest import missing_tool

ROOT = Path(__file__).resolve().parent.parent
HF1 = ROOT / ".ci" / "hf1"
LOWEST = "1.0.0"  # setup.cfg: huggingface_hub>=1.0


def test_cards_and_hub_with_huggingface_hub_1x():
    if not (HF1 / "huggingface_hub").is_dir():
        message = f"huggingface_hub {LOWEST} is not in {HF1}: pip install --no-deps --target {HF1} huggingface_hub=={LOWEST}"
        missing_tool(message)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HF1), str(ROOT)])}
    version = subprocess.run([sys.executable, "-c", "import huggingface_hub; print(huggingface_hub.__version__)"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert version == LOWEST
    # (less the lock test: what it adds, another process holding the cards lock, is not huggingface_hub's)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cards.py",
                           "tests/test_hub.py", "tests/test_hub_server.py",
                           "-k", "not waits_for_the_cards_lock"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout.splitlines()[-1]
