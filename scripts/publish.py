"""The zoo's publishing (maintainers): build every model card folder from training runs, regenerate the index and
the README table, and push the changed cards to the Hugging Face Hub.

For each (arch, rule, dataset) found under RUNS, the seed with the best validation top-1 becomes
``model_cards/<arch>_<rule>.<dataset>/`` (weights, config, card, records); then ``biotorch/pretrained.json``
and the README's results table are regenerated. Folders whose weights changed are pushed when a Hub
token is available (``--token`` or ``huggingface-cli login``). A user's own model goes up with ``biotorch push``.

Usage::

    python scripts/publish.py runs --dry-run          # the plan: what would be built and pushed
    python scripts/publish.py runs --no-push          # build cards, index and README table only
    python scripts/publish.py runs --org me --token hf_...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biotorch.cli import run_command
from biotorch.files import REPO_ROOT
from biotorch.hub import HUB_ORG, MIRROR
from biotorch.publish import publish
from biotorch.registry import PRETRAINED_INDEX


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="publish.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", default="runs", help="folder holding training runs (default: runs)")
    parser.add_argument("--cards-dir", default=str(MIRROR), help="where card folders go (default: model_cards/)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; write and push nothing")
    parser.add_argument("--no-push", dest="push", action="store_false", help="build only, never push")
    parser.add_argument("--force", action="store_true",
                        help="replace a published card even with worse runs (lower val top-1, fewer seeds or "
                             "epochs); the card records it")
    parser.add_argument("--org", default=HUB_ORG, help=f"Hub organisation of the repos (default: {HUB_ORG})")
    parser.add_argument("--token", default=None, help="Hub token (default: huggingface_hub.get_token())")
    parser.add_argument("--index", default=str(PRETRAINED_INDEX), help="the registry index to regenerate "
                        "(default: biotorch/pretrained.json)")
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="README whose table is regenerated")
    return parser


def _publish(args) -> int:
    publish(Path(args.runs), cards_dir=Path(args.cards_dir), dry_run=args.dry_run, push=args.push, org=args.org,
            token=args.token, readme=Path(args.readme), index_path=Path(args.index), force=args.force)
    return 0


def main(argv=None) -> int:
    return run_command("publish.py", _publish, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
