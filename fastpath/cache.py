"""Captured calls cached by everything that changes the graph, with a loud, once-only eager fallback."""

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from .replay import StaticReplay

logger = logging.getLogger("onestep.fastpath")

STRATEGIES = ("auto", "cuda-graph", "static-eager", "eager")
"""auto: CUDA graph on a CUDA device, else eager. static-eager: the graph's buffer protocol without a
graph (for checks on the CPU). eager: no caching at all."""


def tensor_signature(tensors: Sequence[torch.Tensor]) -> tuple:
    """Shapes, dtypes and devices: what a captured graph is specialised on."""
    return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)


def fallback_reason(strategy: str, device: torch.device, compile_requested: bool) -> str | None:
    """Why the fast path cannot run as asked on this device; None when it can."""
    if strategy == "eager":
        return "the eager strategy was chosen"
    if strategy in ("auto", "cuda-graph") and device.type != "cuda":
        return f"CUDA graphs need a CUDA device and this model runs on {device.type}"
    if compile_requested and not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    return None


@dataclass
class CacheStats:
    captures: int = 0
    replays: int = 0
    eager_calls: int = 0
    evictions: int = 0
    failures: list[str] = field(default_factory=list)


class FastCallCache:
    """Up to ``max_entries`` captured calls, least recently used evicted first.

    ``notify`` receives user-facing messages (compiling, fallbacks); each distinct fallback reason is
    reported once per cache.
    """

    def __init__(self, strategy: str = "auto", compile_function: bool = True, max_entries: int = 4,
                 notify: Callable[[str], None] | None = None, propagate: tuple[type[BaseException], ...] = ()):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown fast-path strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self.compile_function = compile_function
        self.max_entries = max_entries
        self.notify = notify or logger.warning
        self.propagate = propagate
        self.entries: OrderedDict[Hashable, StaticReplay] = OrderedDict()
        self.failed: dict[Hashable, str] = {}
        self.reported: set[str] = set()
        self.stats = CacheStats()

    def report_once(self, message: str) -> None:
        if message not in self.reported:
            self.reported.add(message)
            self.notify(message)

    def eager(self, function, inputs, reason: str) -> torch.Tensor:
        self.report_once(f"OneStep fast path: running eager because {reason}.")
        self.stats.eager_calls += 1
        return function(*inputs)

    def call(self, key: Hashable, function: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
             device: torch.device) -> torch.Tensor:
        """``function(*inputs)``, through the captured replay stored under ``key`` (capturing it if new)."""
        reason = fallback_reason(self.strategy, device, self.compile_function)
        if reason is not None:
            return self.eager(function, inputs, reason)
        full_key = (key, tensor_signature(inputs))
        if full_key in self.failed:
            return self.eager(function, inputs, self.failed[full_key])
        replay = self.entries.get(full_key)
        if replay is None:
            replay = self._capture(full_key, function, inputs)
            if replay is None:
                return self.eager(function, inputs, self.failed[full_key])
        self.entries.move_to_end(full_key)
        self.stats.replays += 1
        return replay(*inputs)

    def _capture(self, full_key, function, inputs) -> StaticReplay | None:
        capture = self.strategy in ("auto", "cuda-graph")
        target = function
        if self.compile_function and capture:
            self.notify("OneStep fast path: compiling and capturing a CUDA graph for a new shape "
                        "(the first call takes a while; later calls replay it).")
            target = torch.compile(function, mode="max-autotune-no-cudagraphs", dynamic=False)
        try:
            replay = StaticReplay(target, inputs, capture=capture)
        except self.propagate:
            raise  # an interrupt during capture: nothing is cached, the next call captures afresh
        except Exception as error:  # an op or a patch that cannot be captured
            self.failed[full_key] = f"capture failed ({type(error).__name__}: {error})"
            self.stats.failures.append(self.failed[full_key])
            return None
        self.entries[full_key] = replay
        self.stats.captures += 1
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
            self.stats.evictions += 1
        return replay

    def clear(self) -> None:
        self.entries.clear()
        self.failed.clear()
