"""The idx reader on tiny synthetic files (the real data set is not needed), and the image grid."""

import gzip
import struct

import numpy as np
import pytest
import torch
from onestep.distill.fmnist import image_grid, load_split, read_idx


def write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_gives_back_the_array_gzipped_or_not(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "images", images, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "images"), images)


def test_read_idx_refuses_a_wrong_magic_and_a_truncated_body(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + b"\x00" * 8)
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x01\x02")
    with pytest.raises(ValueError, match="holds 2"):
        read_idx(tmp_path / "short")


def test_load_split_scales_to_minus_one_one(tmp_path):
    images = np.array([[[0, 255], [127, 51]]] * 2, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 9], dtype=np.uint8))
    x, y = load_split("test", tmp_path)
    assert x.shape == (2, 1, 2, 2) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert y.tolist() == [3, 9]


def test_load_split_names_the_package_when_files_are_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_split("train", tmp_path)


def test_image_grid_tiles_rows_with_one_pixel_gaps():
    images = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid(images, columns=2)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1) and grid.dtype == np.uint8
    assert grid[1, 1] == 0 and grid[1, 5] == 128 and grid[4, 1] == 255
