"""The fast-path cache and replay protocol, on plain functions (the CUDA-graph capture itself needs a GPU)."""

import pytest
import torch
from onestep.fastpath.cache import FastCallCache, fallback_reason
from onestep.fastpath.fingerprint import options_fingerprint, parameters_fingerprint
from onestep.fastpath.replay import StaticReplay

CPU = torch.device("cpu")


def test_static_replay_copies_new_inputs_in_and_hands_out_independent_outputs():
    replay = StaticReplay(lambda a, b: a * 2 + b, [torch.zeros(3), torch.zeros(3)], capture=False)
    first = replay(torch.ones(3), torch.full((3,), 5.0))
    second = replay(torch.full((3,), 2.0), torch.zeros(3))
    assert first.tolist() == [7.0, 7.0, 7.0] and second.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="another shape"):
        replay(torch.ones(4), torch.ones(4))


def test_cache_keys_by_key_and_shape_and_evicts_the_least_recently_used():
    cache = FastCallCache("static-eager", compile_function=False, max_entries=2)
    double = lambda x: 2 * x  # noqa: E731
    for key, shape in [("a", 2), ("a", 3), ("a", 2), ("b", 2)]:
        torch.testing.assert_close(cache.call(key, double, [torch.ones(shape)], CPU), 2 * torch.ones(shape))
    assert cache.stats.captures == 3 and cache.stats.evictions == 1
    assert [k[0] for k in cache.entries] == ["a", "b"], "('a', 3) was least recently used"


def test_eager_fallback_is_reported_once_per_reason():
    messages = []
    cache = FastCallCache("auto", notify=messages.append)
    for _ in range(3):
        cache.call("k", lambda x: x + 1, [torch.zeros(1)], CPU)
    assert messages == ["OneStep fast path: running eager because CUDA graphs need a CUDA device and this "
                        "model runs on cpu."]
    assert fallback_reason("auto", torch.device("cuda"), True) is None
    with pytest.raises(ValueError, match="unknown fast-path strategy"):
        FastCallCache("fastest")


def test_a_capture_failure_is_remembered_and_an_interrupt_is_not_swallowed():
    class Interrupt(Exception):
        pass

    cache = FastCallCache("static-eager", compile_function=False, propagate=(Interrupt,))
    calls = []

    def flaky(x):
        calls.append(1)
        if len(calls) == 1:
            raise Interrupt()
        return x

    with pytest.raises(Interrupt):
        cache.call("k", flaky, [torch.zeros(1)], CPU)
    assert not cache.entries and not cache.failed
    cache.call("k", flaky, [torch.zeros(1)], CPU)
    assert len(cache.entries) == 1

    attempts = []

    def fails_only_under_capture(x):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("op not capturable")
        return x + 1

    for _ in range(2):
        torch.testing.assert_close(cache.call("bad", fails_only_under_capture, [torch.zeros(1)], CPU), torch.ones(1))
    assert len(attempts) == 3, "one failed capture, then eager calls without capturing again"
    assert "RuntimeError: op not capturable" in cache.stats.failures[0]


def test_fingerprints_follow_values_of_small_tensors_and_the_identity_of_everything_else():
    patch = object()
    options = {"sigmas": torch.tensor([2.5]), "patches": {"attn2": [patch]}, "uuids": ["per-run"]}
    same = {"sigmas": torch.tensor([2.5]), "patches": {"attn2": [patch]}, "uuids": ["other-run"]}
    assert options_fingerprint(options) == options_fingerprint(same)
    assert options_fingerprint(options) != options_fingerprint({**same, "sigmas": torch.tensor([1.0])})
    assert options_fingerprint(options) != options_fingerprint({**same, "patches": {"attn2": [object()]}})

    module = torch.nn.Linear(2, 2)
    before = parameters_fingerprint(module)
    module.weight = torch.nn.Parameter(module.weight.detach().clone())
    assert parameters_fingerprint(module) != before, "replacing a weight (a LoRA patch, a reload) changes it"
