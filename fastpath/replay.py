"""A function of fixed-shape tensors, captured once and replayed with new input values.

A CUDA graph records kernels on fixed memory addresses, so every call copies its inputs into the
captured (static) buffers, replays, and returns a copy of the static output: no input or output
of one call can leak into the next. ``capture=False`` runs the same buffer protocol eagerly, which
is how the CPU checks the protocol itself.
"""

from collections.abc import Callable, Sequence

import torch

WARMUP_CALLS = 3
"""Calls on a side stream before capture, so lazy initialisation (cuBLAS handles, autotuning) is not recorded."""


class StaticReplay:
    """Replay ``function(*inputs)`` on static buffers; with ``capture`` as one CUDA graph."""

    def __init__(self, function: Callable[..., torch.Tensor], example_inputs: Sequence[torch.Tensor], capture: bool):
        self.function = function
        self.static_inputs = [tensor.detach().clone() for tensor in example_inputs]
        self.graph = None
        # Without a graph, one call up front still fails here, not mid-run, on inputs it cannot take.
        self.static_output = self._capture() if capture else self.function(*self.static_inputs)

    def _capture(self) -> torch.Tensor:
        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            for _ in range(WARMUP_CALLS):
                self.function(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side_stream)
        self.graph = torch.cuda.CUDAGraph()
        # The outer stream context puts the caller's stream back even when the capture fails: torch.cuda.graph's
        # __exit__ leaves its capture stream current when capture_end raises (an op that cannot be captured), and
        # the eager fallback would then run on it.
        with torch.cuda.stream(torch.cuda.current_stream()), torch.cuda.graph(self.graph):
            output = self.function(*self.static_inputs)
        return output

    def matches(self, inputs: Sequence[torch.Tensor]) -> bool:
        """True when the inputs fit the static buffers (shape, dtype, device)."""
        return len(inputs) == len(self.static_inputs) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(inputs, self.static_inputs)
        )

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not self.matches(inputs):
            raise ValueError("StaticReplay called with inputs of another shape, dtype or device than it captured")
        for static, new in zip(self.static_inputs, inputs):
            static.copy_(new)
        if self.graph is None:
            return self.function(*self.static_inputs).clone()
        self.graph.replay()
        return self.static_output.clone()
