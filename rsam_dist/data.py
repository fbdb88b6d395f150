"""Datasets held as tensors, and the index arithmetic that shards them over workers.

Every dataset is small enough to hold whole: uint8 images (N, 3, 32, 32) and int64 labels. A batch
is a slice of shuffled indices, normalised on the device the tensors live on, so no sample is
built in Python and the same code feeds a GPU once the tensors are moved there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rsam_dist.config import DataConfig
from rsam_dist.errors import UserError

# The paper normalises each channel with mean 0.5 and std 0.5, mapping [0, 1] to [-1, 1].
MEAN = 0.5
STD = 0.5
NUM_CLASSES = 10
CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "digits": tuple(str(digit) for digit in range(10)),
    "synthetic": tuple(f"class {index}" for index in range(10)),
}
"""Human names of the 10 classes of each dataset, for figures."""
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageSplit:
    images: torch.Tensor
    """uint8, (N, 3, 32, 32)."""
    labels: torch.Tensor
    """int64, (N,)."""

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> ImageSplit:
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def head(self, count: int | None) -> ImageSplit:
        return self if count is None else ImageSplit(self.images[:count], self.labels[:count])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and labels at `indices` (a tensor on the data's device)."""
        return normalise(self.images[indices]), self.labels[indices]


@dataclass
class Dataset:
    name: str
    train: ImageSplit
    test: ImageSplit

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.name, self.train.to(device), self.test.to(device))


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - MEAN) / STD


def load_dataset(config: DataConfig) -> Dataset:
    loaders = {"cifar10": load_cifar10, "digits": load_digits, "synthetic": make_synthetic}
    dataset = loaders[config.name](config)
    return Dataset(dataset.name, dataset.train.head(config.limit_train), dataset.test.head(config.limit_test))


def ensure_available(config: DataConfig) -> None:
    """Make sure the workers of this machine will find the data, without loading it: download
    CIFAR-10 once (or fail with where to put it) if its files are missing. Digits and synthetic
    data need nothing. The driver calls it before Ray starts, so a missing dataset costs no Ray start."""
    if config.name == "cifar10" and not _cifar_present(Path(config.root).expanduser()):
        load_cifar10(config)


# --- CIFAR-10 ---------------------------------------------------------------------------------

CIFAR10_FILES = ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)))


def _cifar_present(root: Path) -> bool:
    return all((root / "cifar-10-batches-py" / name).is_file() for name in CIFAR10_FILES)


def load_cifar10(config: DataConfig) -> Dataset:
    """CIFAR-10 from `config.root` (torchvision's `cifar-10-batches-py` layout), downloading it
    there first when allowed and missing."""
    from filelock import FileLock
    from torchvision.datasets import CIFAR10

    def read() -> list:
        return [CIFAR10(str(root), train=train, download=False) for train in (True, False)]

    root = Path(config.root).expanduser()
    try:
        splits = read()  # reading needs no lock, so a read-only folder that holds the data works
    except RuntimeError:
        if not config.download:
            raise UserError(_cifar_missing(root, "data.download is false")) from None
        root.mkdir(parents=True, exist_ok=True)
        # Several Ray workers on one node may get here at once: one downloads, the others wait.
        # The lock lives in the temp folder, never in the data folder.
        with FileLock(str(_download_lock(root))):
            try:
                splits = read()  # another worker finished the download meanwhile
            except RuntimeError:
                try:
                    splits = [CIFAR10(str(root), train=train, download=True) for train in (True, False)]
                except Exception as err:  # noqa: BLE001 - any network or archive failure means "no copy"
                    raise UserError(_cifar_missing(root, f"download failed: {type(err).__name__}")) from None
    train, test = (_cifar_split(split) for split in splits)
    return Dataset("cifar10", train, test)


def _download_lock(root: Path) -> Path:
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "rsam-dist-locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"cifar10-{digest}.lock"


def _cifar_split(split) -> ImageSplit:
    images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, uint8
    return ImageSplit(images, torch.tensor(split.targets, dtype=torch.int64))


def _cifar_missing(root: Path, why: str) -> str:
    return (
        f"CIFAR-10 is not in {root}/cifar-10-batches-py ({why}): extract {CIFAR10_URL} into {root} "
        "or set data.root to a directory that holds cifar-10-batches-py"
    )


# --- digits (offline, ships with scikit-learn) ----------------------------------------------


def load_digits(config: DataConfig) -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images), upsampled to 3x32x32, split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    pixels = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    upsampled = F.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False)
    images = (upsampled.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=0.2, random_state=config.split_seed, stratify=bunch.target
    )
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return Dataset(
        "digits",
        ImageSplit(images[train_idx], labels[train_idx]),
        ImageSplit(images[test_idx], labels[test_idx]),
    )


# --- synthetic ------------------------------------------------------------------------------


def make_synthetic(config: DataConfig) -> Dataset:
    """Noise plus a per-class pattern: any size, made in milliseconds, learnable but not trivially."""
    generator = torch.Generator().manual_seed(config.split_seed)
    templates = torch.rand(NUM_CLASSES, 3, 32, 32, generator=generator)

    def split(count: int) -> ImageSplit:
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
        noise = torch.rand(count, 3, 32, 32, generator=generator)
        images = (0.6 * noise + 0.4 * templates[labels]) * 255
        return ImageSplit(images.round().to(torch.uint8), labels)

    return Dataset("synthetic", split(config.synthetic_train_size), split(config.synthetic_test_size))


# --- sharding -------------------------------------------------------------------------------


def train_batches(
    num_examples: int,
    global_batch: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """This rank's index batches for one epoch, on `device` (one copy an epoch, none a step).

    All ranks draw the same permutation (seeded by seed and epoch, so it is reshuffled every epoch)
    and cut it into global batches; rank r takes the r-th contiguous share of each. The union of
    the ranks' shares is exactly the batch a single worker would take, which is what makes a DDP
    run follow the single-worker trajectory. The last incomplete global batch is dropped.
    """
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} does not divide by {world_size} workers")
    local = global_batch // world_size
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).to(device)
    for start in range(0, num_examples - global_batch + 1, global_batch):
        yield order[start + rank * local : start + (rank + 1) * local]


def test_shard(num_examples: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Rank r's test indices: every world_size-th example, so the ranks cover the set exactly once."""
    return torch.arange(min(rank, num_examples), num_examples, world_size)  # empty past the end
