"""Build every model card folder from training runs and push the changed ones to the Hugging Face Hub.

For each (arch, rule, dataset) found under RUNS, the seed with the best validation top-1 becomes
``model_cards/<arch>_<rule>.<dataset>/`` (weights, config, card, records); then ``biotorch/pretrained.json``
and the README's results table are regenerated. Folders whose weights changed are pushed when a Hub
token is available (``--token`` or ``huggingface-cli login``). The same as ``biotorch push``.

Usage::

    python scripts/publish.py runs --dry-run          # the plan: what would be built and pushed
    python scripts/publish.py runs --no-push          # build cards, index and README table only
    python scripts/publish.py runs --org me --token hf_...
"""
from __future__ import annotations

import sys

from biotorch.cli import main

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
