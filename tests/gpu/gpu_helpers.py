"""Shared by the GPU tier's tests."""

import torch

FP16_TOLERANCE = 5e-3
"""Largest relative error between two fp16 / bf16 computations of one function that counts as equal (a replayed CUDA
graph runs the eager kernels, so it is usually exact; cuDNN may pick another algorithm for the capture)."""


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64; NaN anywhere gives NaN (which fails every comparison)."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


def assert_equal_outputs(value: torch.Tensor, reference: torch.Tensor, exact: bool, what: str) -> None:
    """Exactly equal (CPU dry run: the same kernels on the same buffers), else within FP16_TOLERANCE."""
    assert value.shape == reference.shape, f"{what}: shape {tuple(value.shape)} != {tuple(reference.shape)}"
    assert torch.isfinite(value).all(), f"{what}: non-finite values"
    if exact:
        torch.testing.assert_close(value, reference, rtol=0, atol=0, msg=what)
        return
    error = relative_error(value, reference)
    assert error <= FP16_TOLERANCE, f"{what}: relative error {error:.2e} > {FP16_TOLERANCE:.0e}"
