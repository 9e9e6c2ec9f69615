"""Write the small sample folders in samples/ used by the README's offline demo.

- samples/fashion_mnist/: the first 100 Fashion-MNIST test images, in order, as 28x28 grayscale
  PNGs (original pixels) named <test index>_<label>.png;
- samples/cifar10_jpeg/: the first 10 test images of each class (ImageFolder order: class, then
  file name), the original JPEG bytes copied from the tarball, named <test index>_<class>.jpg,
  where <test index> is the image's position in load_split("cifar10_jpeg", "test").

Each folder gets a labels.csv (file,label) that biotorch.data.load_samples reads.

Usage::

    python scripts/make_samples.py --fashion-mnist /work/shared/data/fashion-mnist \\
        --cifar10-jpeg /work/shared/data/cifar10-jpeg.tar.gz --out samples
"""

from __future__ import annotations

import argparse
import csv
import re
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

from biotorch.data import DATASETS, load_split


def slug(label_name: str) -> str:
    """'T-shirt/top' -> 't_shirt_top'."""
    return re.sub(r"[^a-z0-9]+", "_", label_name.lower()).strip("_")


def write_labels(folder: Path, rows: list[tuple[str, int]]) -> None:
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "label"])
        writer.writerows(rows)


def fashion_mnist(source: Path, out: Path, count: int = 100) -> None:
    images, labels = load_split("fashion_mnist", "test", data_dir=source)
    images = images[:count, :, 2:-2, 2:-2]  # undo the 32x32 padding: original 28x28 pixels
    names = DATASETS["fashion_mnist"].label_names
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        name = f"{i:04d}_{slug(names[label])}.png"
        Image.fromarray(image[0].numpy()).save(out / name, compress_level=9)
        rows.append((name, label))
    write_labels(out, rows)


def cifar10_jpeg(tarball: Path, out: Path, per_class: int = 10) -> None:
    classes = DATASETS["cifar10_jpeg"].label_names
    members: dict[str, list[tarfile.TarInfo]] = defaultdict(list)
    with tarfile.open(tarball, "r:*") as tar:
        everything = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")]
        for m in everything:
            split, cls, _ = m.name.split("/")[-3:]
            if split == "test":
                members[cls].append(m)
        out.mkdir(parents=True, exist_ok=True)
        rows, offset = [], 0
        for label, cls in enumerate(classes):
            files = sorted(members[cls], key=lambda m: m.name.rsplit("/", 1)[-1])
            for k, m in enumerate(files[:per_class]):
                name = f"{offset + k:04d}_{cls}.jpg"
                (out / name).write_bytes(tar.extractfile(m).read())
                rows.append((name, label))
            offset += len(files)
    write_labels(out, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion-mnist", type=Path, default=Path("/work/shared/data/fashion-mnist"),
                        help="folder with the four Fashion-MNIST IDX .gz files")
    parser.add_argument("--cifar10-jpeg", type=Path,
                        default=Path("/work/shared/data/cifar10-jpeg.tar.gz"),
                        help="cifar10-jpeg.tar.gz")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "samples")
    args = parser.parse_args()
    fashion_mnist(args.fashion_mnist, args.out / "fashion_mnist")
    cifar10_jpeg(args.cifar10_jpeg, args.out / "cifar10_jpeg")
    print(f"wrote {args.out}/fashion_mnist and {args.out}/cifar10_jpeg")


if __name__ == "__main__":
    main()
