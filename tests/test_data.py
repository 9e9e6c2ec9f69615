"""Tests for biotorch.data on tiny synthetic data (no network, nothing from shared/)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import struct
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from biotorch import data
from biotorch.data import sources
from biotorch.data import DATASETS, DeviceLoader, eval_transform, imagefolder_info, load_samples, load_split
from conftest import encoded, raw_png

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test may see the user's data, cache or system datasets."""
    monkeypatch.setenv("BIOTORCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOTORCH_DATA", raising=False)
    monkeypatch.setattr(sources, "_SYSTEM_DIRS", {})


def write_idx(path: Path, array: torch.Tensor, compress: bool = True) -> None:
    """Write a uint8 tensor in the IDX format of the MNIST files."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.numpy().tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def indexed_images(n: int, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    """Random uint8 images whose pixel (0, 0) holds their index, so a batch can be traced back."""
    images = torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images


@pytest.fixture
def tiny_mnist(tmp_path) -> tuple[Path, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = tmp_path / "fashion"
    folder.mkdir()
    train_x, test_x = indexed_images(40)[:, 0], indexed_images(12, seed=1)[:, 0]
    train_y, test_y = torch.arange(40, dtype=torch.uint8) % 10, torch.arange(12, dtype=torch.uint8) % 10
    write_idx(folder / "train-images-idx3-ubyte.gz", train_x)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_y)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_y)
    return folder, train_x, train_y, test_x, test_y


def write_jpeg_folder(root: Path, classes: dict[str, int], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            image = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
            (root / cls / f"{i:04d}.jpg").write_bytes(encoded(image, "JPEG", quality=90))


@pytest.fixture
def tiny_cifar_jpeg(tmp_path) -> Path:
    root = tmp_path / "cifar10-jpeg"
    write_jpeg_folder(root / "train", {"truck": 4, "airplane": 4, "cat": 4})
    write_jpeg_folder(root / "test", {"truck": 2, "airplane": 2, "cat": 2}, seed=1)
    return root


# ---------------------------------------------------------------------------------------------


def test_dataset_table_is_consistent():
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "cifar10_jpeg", "cifar10_jpeg_gray",
                             "imagefolder", "synthetic"}
    for name, info in DATASETS.items():
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.in_chans == info.input_size[0]
        if info.num_classes is not None:
            assert len(info.label_names) == info.num_classes
    assert DATASETS["fashion_mnist"].input_size == (1, 32, 32)
    assert (DATASETS["mnist"].train_size, DATASETS["mnist"].val_size) == (50_000, 10_000)
    assert (DATASETS["cifar10"].train_size, DATASETS["cifar10"].val_size) == (45_000, 5_000)
    assert DATASETS["cifar10_jpeg"].label_names[:3] == ("airplane", "automobile", "bird")


def test_holdout_permutation_is_pinned():
    # The published val numbers depend on these exact indices: fail loudly if torch's RNG changes.
    train, val = data.holdout(60_000, 10_000)
    assert val[:5].tolist() == [1, 3, 32, 34, 47] and int(val.sum()) == 300_543_041
    train, val = data.holdout(50_000, 5_000)
    assert val[:5].tolist() == [1, 11, 23, 39, 44] and int(val.sum()) == 124_322_501
    assert len(train) == 45_000 and not set(train.tolist()) & set(val.tolist())


def test_idx_test_split_is_padded(tiny_mnist):
    folder, _, _, test_x, test_y = tiny_mnist
    images, labels = load_split("fashion_mnist", "test", data_dir=folder)
    assert images.shape == (12, 1, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and torch.equal(labels, test_y.long())
    assert torch.equal(images[:, 0, 2:30, 2:30], test_x)
    border = images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0


def test_val_split_is_fixed_disjoint_and_sized(tiny_mnist):
    folder, train_x, train_y, _, _ = tiny_mnist
    train, train_labels = load_split("mnist", "train", data_dir=folder, val_size=10)
    val, val_labels = load_split("mnist", "val", data_dir=folder, val_size=10)
    assert len(train) == 30 and len(val) == 10
    train_ids, val_ids = train[:, 0, 2, 2].tolist(), val[:, 0, 2, 2].tolist()  # pixel (0, 0) = index
    assert sorted(train_ids + val_ids) == list(range(40))
    assert torch.equal(val_labels, train_y[val_ids].long())
    again, _ = load_split("mnist", "val", data_dir=folder, val_size=10)
    assert torch.equal(again, val)
    everything, _ = load_split("mnist", "train", data_dir=folder, val_size=0)
    assert len(everything) == 40
    with pytest.raises(ValueError, match="val_size"):
        load_split("mnist", "val", data_dir=folder)  # the default 10,000 exceeds 40 images


def test_torchvision_layout_and_env_var(tiny_mnist, tmp_path, monkeypatch):
    folder, _, _, test_x, _ = tiny_mnist
    raw = tmp_path / "store" / "fashion_mnist" / "FashionMNIST" / "raw"  # as download=True leaves it
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x, compress=False)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    monkeypatch.setenv("BIOTORCH_DATA", str(tmp_path / "store"))
    images, _ = load_split("fashion_mnist", "test")
    assert torch.equal(images[:, 0, 2:30, 2:30], test_x)


def test_missing_data_lists_where_it_looked(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        load_split("mnist", "train", data_dir=nowhere)
    message = str(error.value)
    assert str(nowhere) in message and str(tmp_path / "cache" / "data" / "mnist") in message
    assert "--data-dir" in message and "download=True" in message
    with pytest.raises(FileNotFoundError, match="cifar10_jpeg"):
        load_split("cifar10_jpeg", "test", data_dir=nowhere)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_split("cifar10", "test", data_dir=nowhere)


def test_bad_idx_file_is_rejected(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not an idx file"))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"nor this"))
    with pytest.raises(ValueError, match="IDX"):
        load_split("mnist", "train", data_dir=tmp_path)


def test_cifar10_jpeg_folder_decodes_and_caches(tiny_cifar_jpeg, tmp_path):
    images, labels = load_split("cifar10_jpeg", "test", data_dir=tiny_cifar_jpeg)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 3, 3, 9, 9]  # ImageFolder order, CIFAR-10 label indices
    with Image.open(tiny_cifar_jpeg / "test" / "airplane" / "0000.jpg") as first:
        assert torch.equal(images[0], pil_to_tensor(first.convert("RGB")))
    cached = list((tmp_path / "cache" / "decoded").glob("cifar10_jpeg-*/test_images.npy"))
    assert len(cached) == 1
    again, _ = load_split("cifar10_jpeg", "test", data_dir=tiny_cifar_jpeg)  # from the cache
    assert torch.equal(again, images)
    train, _ = load_split("cifar10_jpeg", "train", data_dir=tiny_cifar_jpeg, val_size=3)
    val, _ = load_split("cifar10_jpeg", "val", data_dir=tiny_cifar_jpeg, val_size=3)
    assert len(train) == 9 and len(val) == 3


def test_cifar10_jpeg_gray_is_the_luma_of_the_same_files(tiny_cifar_jpeg, tmp_path):
    gray, labels = load_split("cifar10_jpeg_gray", "test", data_dir=tiny_cifar_jpeg)
    color, color_labels = load_split("cifar10_jpeg", "test", data_dir=tiny_cifar_jpeg)
    assert gray.shape == (6, 1, 32, 32) and torch.equal(labels, color_labels)
    with Image.open(tiny_cifar_jpeg / "test" / "airplane" / "0000.jpg") as first:
        first.draft("YCbCr", first.size)  # libjpeg's YCbCr output: its Y plane as stored, before any colour maths
        luma = pil_to_tensor(first)[:1]
    assert torch.equal(gray[0], luma)  # the JPEG's own Y plane: 0.299 R + 0.587 G + 0.114 B
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    assert ((color.float() * weights).sum(1, keepdim=True) - gray.float()).abs().mean() < 3  # up to chroma rounding
    assert {p.name.split("-")[0] for p in (tmp_path / "cache" / "decoded").iterdir()} == {"cifar10_jpeg",
                                                                                       "cifar10_jpeg_gray"}
    assert eval_transform("cifar10_jpeg_gray")(color[0]).shape == (1, 32, 32)  # colour input made gray


def test_cifar10_jpeg_tarball_matches_folder(tiny_cifar_jpeg, tmp_path):
    tarball = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tiny_cifar_jpeg, arcname="cifar10-jpeg")
    from_tar = load_split("cifar10_jpeg", "train", data_dir=tarball, val_size=0)
    from_folder = load_split("cifar10_jpeg", "train", data_dir=tiny_cifar_jpeg, val_size=0)
    assert all(torch.equal(a, b) for a, b in zip(from_tar, from_folder))
    assert load_split("cifar10_jpeg", "test", data_dir=tmp_path)[0].shape == (6, 3, 32, 32)  # finds the tarball


def test_jpeg_pixels_are_the_ones_the_zoo_was_trained_on():
    """The cifar10_jpeg cards were trained on torchvision.io's decoding (deprecated since torchvision 0.29); Pillow's
    gives the same pixels bit for bit, RGB and gray. The fixture holds each sample image's sha256 as torchvision
    0.29.1 decoded it (through ``load_samples``, before the switch)."""
    golden = json.loads((FIXTURES / "cifar10_jpeg_samples_sha256.json").read_text())["images"]
    with open(SAMPLES / "cifar10_jpeg" / "labels.csv", newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    for dataset, expected in golden.items():
        images, _ = load_samples(SAMPLES / "cifar10_jpeg", dataset=dataset)
        got = {name: hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest() for name, x in zip(files, images)}
        differ = [name for name in expected if got.get(name) != expected[name]]
        assert len(expected) == 100 and not differ, f"{dataset}: {len(differ)} images decode differently: {differ[:5]}"


def test_an_image_that_cannot_be_decoded_is_named(tiny_cifar_jpeg, tmp_path):
    (tiny_cifar_jpeg / "test" / "cat" / "0001.jpg").write_bytes(b"\xff\xd8 cut short")
    with pytest.raises(ValueError, match=r"cifar10-jpeg/test/cat/0001\.jpg: cannot decode an image"):
        load_split("cifar10_jpeg", "test", data_dir=tiny_cifar_jpeg)
    bad = tmp_path / "user" / "train" / "ant"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"train/ant/a\.png: cannot decode an image"):
        load_split("imagefolder", "train", data_dir=tmp_path / "user")


def test_16_bit_pngs_are_brought_to_8_bits_not_saturated(tmp_path):
    """A 16-bit PNG's value v is the 8-bit v >> 8, gray or RGB, read as gray or RGB (issue 47: gray went to 255)."""
    import numpy as np

    Image.fromarray(np.full((28, 28), 16384, np.uint16)).save(tmp_path / "gray16.png")  # Pillow writes 16-bit gray
    (tmp_path / "rgb16.png").write_bytes(raw_png(28, 28, (b"\0" + struct.pack(">HHH", 16384, 32768, 65535) * 28) * 28))
    (tmp_path / "labels.csv").write_text("file,label\ngray16.png,0\nrgb16.png,1\n")
    gray_of_rgb = Image.new("RGB", (1, 1), (64, 128, 255)).convert("L").getpixel((0, 0))
    rgb, _ = load_samples(tmp_path, "cifar10")          # RGB, resized to 32x32 (a flat image stays flat)
    gray, _ = load_samples(tmp_path, "fashion_mnist")   # gray, padded to 32x32
    assert rgb[0, :, 16, 16].tolist() == [64, 64, 64] and rgb[1, :, 16, 16].tolist() == [64, 128, 255]
    assert gray[0, 0, 16, 16] == 64 and gray[1, 0, 16, 16] == gray_of_rgb


def test_cifar10_jpeg_rejects_unknown_classes(tmp_path):
    write_jpeg_folder(tmp_path / "train", {"dragon": 1})
    write_jpeg_folder(tmp_path / "test", {"cat": 1})
    with pytest.raises(ValueError, match="dragon"):
        load_split("cifar10_jpeg", "test", data_dir=tmp_path)


def test_cifar10_through_torchvision(tmp_path, monkeypatch):
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args: True)  # tiny fakes, not the md5s
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = indexed_images(12, c=3, h=32, w=32)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]):
        batch = {"data": images[2 * i:2 * i + 2].reshape(2, -1).numpy(), "labels": [i, i]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": images[10:].reshape(2, -1).numpy(), "labels": [7, 8]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(DATASETS["cifar10"].label_names)}))
    test, test_labels = load_split("cifar10", "test", data_dir=tmp_path)
    assert torch.equal(test, images[10:]) and test_labels.tolist() == [7, 8]
    train, train_labels = load_split("cifar10", "train", data_dir=folder, val_size=2)  # the folder itself
    assert train.shape == (8, 3, 32, 32) and train_labels.dtype == torch.int64
    assert all(torch.equal(x, images[int(x[0, 0, 0])]) for x in train)


def test_imagefolder_resizes_and_reads_classes(tmp_path):
    for split, cls, size in (("train", "ant", (40, 60)), ("train", "bee", (50, 50)), ("val", "bee", (64, 48))):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
        (tmp_path / split / cls / "a.png").write_bytes(encoded(image))
    info = imagefolder_info(tmp_path)
    assert info.num_classes == 2 and info.label_names == ("ant", "bee")
    images, labels = load_split("imagefolder", "train", data_dir=tmp_path)
    assert images.shape == (2, 3, 224, 224) and labels.tolist() == [0, 1]
    assert load_split("imagefolder", "val", data_dir=tmp_path)[1].tolist() == [1]


def test_eval_transform_on_pil_and_tensors():
    t = eval_transform("fashion_mnist")
    pixels = indexed_images(1)[0]
    from_pil = t(Image.fromarray(pixels[0].numpy(), mode="L"))
    expected = (torch.nn.functional.pad(pixels, (2, 2, 2, 2)).float() / 255 - 0.2860) / 0.3530
    assert from_pil.shape == (1, 32, 32) and torch.allclose(from_pil, expected, atol=1e-6)
    assert torch.allclose(t(torch.nn.functional.pad(pixels, (2, 2, 2, 2))), expected, atol=1e-6)
    assert t(Image.new("RGB", (28, 28))).shape == (1, 32, 32)  # colour photos become grayscale
    info = DATASETS["cifar10"]
    batch = indexed_images(4, c=3, h=32, w=32)
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    assert torch.allclose(eval_transform(info)(batch), (batch / 255 - mean) / std, atol=1e-6)
    assert eval_transform("imagefolder")(Image.new("L", (300, 500))).shape == (3, 224, 224)


# --------------------------------------------------------------------------------------------- loader


def make_loader(images, device="cpu", **kwargs) -> DeviceLoader:
    c = images.shape[1]
    options = dict(batch_size=8, mean=(0.0,) * c, std=(1 / 255,) * c, train=True, augment="none",
                   seed=0, drop_last=False, device=device)
    options.update(kwargs)
    # labels = position, so every yielded sample names its source image
    return DeviceLoader(images, torch.arange(len(images)), **options)


def epoch(loader: DeviceLoader, number: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(number)
    xs, ys = zip(*loader)
    return torch.cat(xs).cpu(), torch.cat(ys).cpu()


@pytest.mark.parametrize("device", DEVICES)
def test_loader_is_deterministic_per_seed_and_epoch(device):
    images = indexed_images(50, c=3, h=8, w=8)
    a, b = make_loader(images, device, augment="crop_flip"), make_loader(images, device, augment="crop_flip")
    x1, y1 = epoch(a, 3)
    x2, y2 = epoch(b, 3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(epoch(a, 4)[1], y1)
    assert not torch.equal(epoch(make_loader(images, device, seed=1), 3)[1], y1)
    assert sorted(y1.tolist()) == list(range(50))


def test_loader_length_and_drop_last():
    images = indexed_images(50, h=4, w=4)
    assert len(make_loader(images)) == 7 and len(make_loader(images, drop_last=True)) == 6
    assert len(epoch(make_loader(images, drop_last=True), 0)[1]) == 48
    sizes = [len(y) for _, y in make_loader(images)]
    assert sizes == [8] * 6 + [2]


@pytest.mark.parametrize("device", DEVICES)
def test_loader_normalises_on_device(device):
    images = indexed_images(20, c=3, h=8, w=8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    loader = make_loader(images, device, mean=mean, std=std, channels_last=True)
    x, y = next(iter(loader))
    assert x.device.type == device and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x.cpu(), (images[y.cpu()] / 255 - m) / s, atol=1e-5)


def test_eval_loader_keeps_order():
    images = indexed_images(20, h=4, w=4)
    x, y = epoch(make_loader(images, train=False), 5)
    assert y.tolist() == list(range(20)) and torch.equal(x.round().to(torch.uint8), images)
    with pytest.raises(ValueError, match="augment"):
        make_loader(images, train=False, augment="crop")


@pytest.mark.parametrize("train", [True, False])
def test_shards_are_disjoint_and_match_single_process(train):
    images = indexed_images(51, c=3, h=8, w=8)
    augment = "crop_flip" if train else "none"
    shards = [epoch(make_loader(images, rank=r, world_size=2, train=train, augment=augment), 2) for r in (0, 1)]
    ids = [set(y.tolist()) for _, y in shards]
    assert not ids[0] & ids[1]
    if train:  # equal slices of one permutation, with the same draws as a single process
        assert len(ids[0]) == len(ids[1]) == 25
        x, y = epoch(make_loader(images, augment=augment), 2)
        assert torch.equal(torch.cat([shards[0][1], shards[1][1]]), y[:50])
        assert torch.equal(torch.cat([shards[0][0], shards[1][0]]), x[:50])
    else:  # evaluation covers every sample exactly once
        assert ids[0] | ids[1] == set(range(51))


def crop_of(output: torch.Tensor, padded: torch.Tensor, allow_flip: bool) -> tuple[int, int, bool] | None:
    h, w = output.shape[-2:]
    for dy in range(padded.shape[-2] - h + 1):
        for dx in range(padded.shape[-1] - w + 1):
            window = padded[:, dy:dy + h, dx:dx + w]
            for flipped in (False, True) if allow_flip else (False,):
                if torch.equal(output, window.flip(-1) if flipped else window):
                    return dy, dx, flipped
    return None


@pytest.mark.parametrize("augment", ["crop_flip", "crop"])
def test_augmented_images_are_crops_of_the_padded_image(augment):
    images = indexed_images(64, c=3, h=8, w=8)
    x, y = epoch(make_loader(images, augment=augment), 1)
    assert x.shape == images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    found = [crop_of(out, padded[i], allow_flip=augment == "crop_flip")
             for out, i in zip(x.round().to(torch.uint8), y.tolist())]
    assert all(f is not None for f in found)
    assert len({(dy, dx) for dy, dx, _ in found}) > 10  # offsets do vary
    assert any(f for _, _, f in found) == (augment == "crop_flip")


# --------------------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("name, channels", [("fashion_mnist", 1), ("cifar10_jpeg", 3)])
def test_committed_samples_load(name, channels):
    images, labels = load_samples(SAMPLES / name)
    assert images.shape == (100, channels, 32, 32) and images.dtype == torch.uint8
    assert labels.min() >= 0 and labels.max() < 10
    with open(SAMPLES / name / "labels.csv") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    names = DATASETS[name].label_names
    assert all(file.split("_", 1)[1].rsplit(".", 1)[0] ==
               names[label].lower().replace("-", "_").replace("/", "_").replace(" ", "_")
               for file, label in zip(files, labels.tolist()))
    if name == "fashion_mnist":
        assert images[:, :, :2].sum() == 0 and images[:, :, :, -2:].sum() == 0  # padded like the dataset
    else:
        assert torch.bincount(labels).tolist() == [10] * 10


def test_limit_train_takes_every_class_in_turn():
    labels = torch.tensor([0] * 40 + [1] * 30 + [2] * 30)  # files sorted by class: the first 16 are all 0s
    keep = data.balanced_subset(labels, 16)
    assert keep.tolist() == sorted(keep.tolist()) and len(set(keep.tolist())) == 16
    assert torch.bincount(labels[keep]).tolist() == [6, 5, 5]  # each class its first files, in file order
    assert keep[labels[keep] == 1].tolist() == [40, 41, 42, 43, 44]
    assert data.balanced_subset(labels, 500).tolist() == list(range(100))
