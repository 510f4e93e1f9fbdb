"""Fashion-MNIST from its idx files (Xiao et al. 2017; Debian package ``dataset-fashion-mnist``), with gzip and numpy.

idx format (LeCun's MNIST page): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, then each dimension as a big-endian uint32, then the data in C order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """An unsigned-byte idx file (optionally gzipped) as a numpy array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} values), file holds {body.size}")
    return body.reshape(shape)


def load_split(split: str = "train", root: str | Path = DEFAULT_ROOT) -> tuple[Tensor, Tensor]:
    """(images [N, 1, 28, 28] float32 scaled to [-1, 1], labels [N] int64) of the train or test split."""
    root = Path(root)
    image_file, label_file = FILES[split]
    missing = [name for name in (image_file, label_file) if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {root}; install the Debian package "
            f"`dataset-fashion-mnist` or pass the folder that holds them"
        )
    images = torch.from_numpy(read_idx(root / image_file).copy()).float().div(127.5).sub(1).unsqueeze(1)
    labels = torch.from_numpy(read_idx(root / label_file).copy()).long()
    return images, labels


def image_grid(images: Tensor, columns: int) -> np.ndarray:
    """Images [N, 1, H, W] in [-1, 1] tiled row by row into one uint8 array (1-pixel gaps), ready for PIL."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1), dtype=np.uint8)
    pixels = ((images[:, 0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    for i, image in enumerate(pixels):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = image
    return grid
