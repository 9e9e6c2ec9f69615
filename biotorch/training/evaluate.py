"""Top-1 / top-5 of a model on a split, and ``biotorch eval``.

Example::

    $ biotorch eval lenet_fa.fashion_mnist --data fashion_mnist --per-class
    $ biotorch eval --checkpoint runs/lenet_fa --data fashion_mnist        # a run folder or a .safetensors
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, *, autocast: Optional[Callable] = None,
             all_sum: Optional[Callable[[Tensor], Tensor]] = None, per_class: bool = False) -> dict:
    """Loss, top-1 and top-5 (%) of ``model`` over ``loader``; sums stay on the device until the end.

    ``all_sum`` adds the sums across DDP ranks (each rank evaluating its share of the split).
    """
    was_training = model.training
    model.eval()
    device = loader.device
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    class_total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    class_correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        with (autocast or contextlib.nullcontext)():
            logits = model(x)
        hits = logits.topk(k, dim=1).indices == y[:, None]
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                             hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             torch.tensor(len(y), dtype=torch.float64, device=device)])
        if per_class:
            one_hot = F.one_hot(y, num_classes)
            class_total += one_hot.sum(0)
            class_correct += (one_hot * hits[:, :1]).sum(0)
    if all_sum is not None:
        sums = all_sum(sums)
        if per_class:
            class_total, class_correct = all_sum(class_total), all_sum(class_correct)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    count = max(count, 1)
    result = {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count, "images": int(count)}
    if per_class:
        result["per_class"] = [{"images": int(t), "top1": 100 * c / t if t else float("nan")}
                               for t, c in zip(class_total.tolist(), class_correct.tolist())]
    return result


# ---------------------------------------------------------------------------------------------------
# biotorch eval


SAMPLES = Path(__file__).resolve().parents[2] / "samples"  # sample test images shipped in the repository


def _samples(folder: Path, dataset: str, device):
    from ..data import load_samples

    if not (folder / "labels.csv").is_file():
        raise FileNotFoundError(f"no sample images for {dataset} in {folder}")
    images, labels = load_samples(folder, dataset)
    return images.to(device), labels.to(device)


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for candidate in (path / "best.safetensors", path / "model.safetensors", path / "checkpoint" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no weights in {path}: expected a .safetensors file or a folder holding "
                            "best.safetensors (a run) or model.safetensors")


def run_eval(args) -> int:
    import biotorch

    from . import checkpoint as ckpt
    from . import datasets
    from ..data import DeviceLoader
    from .recipe import SYNTHETIC
    from .trainer import resolve_device

    if args.data is None:
        if args.checkpoint or args.model is None:
            raise ValueError("--data is needed with --checkpoint (which dataset to evaluate on)")
        args.data = biotorch.get_pretrained_cfg(args.model).dataset  # the checkpoint's own data
    if args.data not in [*datasets.DATASETS, SYNTHETIC]:
        raise ValueError(f"--data {args.data!r} is not a dataset; choose one of "
                         f"{', '.join([*datasets.DATASETS, SYNTHETIC])}")
    info = datasets.dataset_info(args.data, args.data_dir)
    device = resolve_device(args.device)
    name, rule_options = args.model, {}
    if args.checkpoint:
        weights = _weights_file(Path(args.checkpoint))
        metadata = ckpt.read_metadata(weights)
        config_file = next((p / "config.json" for p in (weights.parent, weights.parent.parent)
                            if (p / "config.json").is_file()), None)
        config = json.loads(config_file.read_text()) if config_file else {}
        rule_options = config.get("rule_options") or {}
        if name is None:
            if "arch" not in metadata:
                raise ValueError(f"{weights} has no arch/rule metadata: name the model, e.g. "
                                 "biotorch eval resnet20_fa --checkpoint ...")
            name = f"{metadata['arch']}_{metadata.get('rule', 'bp')}"
        name = name.partition(".")[0]  # the checkpoint provides the weights, not the tag
        model = biotorch.create_model(name, checkpoint=weights, num_classes=info.num_classes,
                                      in_chans=info.in_chans, device=device, **rule_options)
        source = str(weights)
    else:
        if name is None:
            raise ValueError("name a model (e.g. lenet_fa.fashion_mnist) or pass --checkpoint")
        model = biotorch.create_model(name, pretrained=True, device=device)
        source = "published weights"
        classes = getattr(model, "biotorch_config", {}).get("num_classes")
        if classes is not None and classes != info.num_classes:
            raise ValueError(f"{name} has {classes} outputs but {args.data} has {info.num_classes} classes")
    samples, split = SAMPLES / args.data, args.split
    try:
        if args.samples:
            raise FileNotFoundError("--samples")
        images, labels = datasets.load(args.data, args.split, args.data_dir, download=args.download, device=device)
    except FileNotFoundError as error:
        if args.split != "test" or not (samples / "labels.csv").is_file():
            raise
        if not args.samples:
            print(f"biotorch eval: no {args.data} test set found ({' '.join(str(error).split())[:300]}); "
                  f"evaluating on the {args.data} sample images shipped in {samples} instead")
        images, labels = _samples(samples, args.data, device)
        split = f"samples ({samples.name})"
    loader = DeviceLoader(images, labels, args.batch_size, info.mean, info.std, train=False, device=device)
    context = biotorch.exact_gradients(model) if args.exact_gradients else contextlib.nullcontext()
    with context:
        result = evaluate(model, loader, info.num_classes, per_class=args.per_class)
    if args.json:
        print(json.dumps({"model": name, "dataset": args.data, "split": split, "weights": source, **result},
                         indent=2))
        return 0
    print(f"{name} on {args.data} {split} ({result['images']:,} images, {source}): "
          f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    if args.per_class:
        names = list(info.label_names) or [str(i) for i in range(info.num_classes)]
        width = max(len(n) for n in names + ["class"])
        print(f"{'class':<{width}}  {'images':>7}  {'top-1':>7}")
        for label, row in zip(names, result["per_class"]):
            print(f"{label:<{width}}  {row['images']:>7}  {row['top1']:>6.2f}%")
    return 0


def add_eval_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="top-1/top-5 of a published model or a checkpoint on a dataset split",
        description="Evaluate a model: `biotorch eval lenet_fa.fashion_mnist --data fashion_mnist` (published "
                    "weights) or `biotorch eval --checkpoint runs/x --data fashion_mnist`.")
    parser.add_argument("model", nargs="?", help="registry name, e.g. lenet_fa.fashion_mnist (optional with "
                        "--checkpoint, whose metadata names the model)")
    parser.add_argument("--data", help="dataset name, e.g. fashion_mnist (default: the checkpoint's own)")
    parser.add_argument("--samples", action="store_true",
                        help="evaluate on the sample images shipped in samples/<data> (used automatically "
                             "when the test set is not found)")
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument("--download", action="store_true", help="download the dataset when missing")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--checkpoint", help="a .safetensors file, or a run folder (its best.safetensors)")
    parser.add_argument("--per-class", action="store_true", help="print top-1 per class")
    parser.add_argument("--exact-gradients", action="store_true",
                        help="evaluate inside biotorch.exact_gradients (exact backward for probes)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run_eval)
