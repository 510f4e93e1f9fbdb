"""Checkpoint I/O: atomic writes, a crash mid-save, exact state round trips, refusals that name the cause."""

import json
import os
import random

import numpy as np
import pytest
import torch
from onestep.distill import checkpoint as ckpt
from onestep.distill.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    atomic_write_bytes,
    capture_rng,
    flatten_optimizer_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    network_signature,
    restore_rng,
    save_checkpoint,
    unflatten_optimizer_state,
)
from torch import nn

CONFIG = {"method": "sid", "alpha": 1.2, "steps": 10, "noise": {"p_mean": -1.2}}


def trained_model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.0, 0.999), eps=1e-8)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
    return model, optimizer


def save(run_dir, step, model, optimizer, config=CONFIG, **kw):
    return save_checkpoint(
        run_dir,
        step,
        weights={"generator": model.state_dict()},
        optimizers={"generator": optimizer.state_dict()},
        config=config,
        signature=network_signature({"generator": model}),
        **kw,
    )


def leftovers(run_dir):
    return [p.name for p in run_dir.iterdir() if ".tmp" in p.name or ".old" in p.name]


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "latest"
    atomic_write_bytes(target, b"step_000001")
    atomic_write_bytes(target, b"step_000002")
    assert target.read_bytes() == b"step_000002"
    assert os.listdir(tmp_path) == ["latest"]


def test_atomic_write_that_fails_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "latest"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(ckpt.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"


def test_checkpoint_folder_layout_and_latest_pointer(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    first = save(tmp_path, 1, model, optimizer)
    second = save(tmp_path, 2, model, optimizer)
    assert first.name == "step_000001" and second.name == "step_000002"
    assert (tmp_path / "latest").read_text() == "step_000002"
    assert latest_checkpoint(tmp_path) == second
    assert {p.name for p in second.iterdir()} == {
        "generator.safetensors",
        "optimizers.safetensors",
        "rng.safetensors",
        "state.json",
    }
    assert leftovers(tmp_path) == []


def test_crash_while_publishing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = trained_model_and_optimizer()
    first = save(tmp_path, 1, model, optimizer)
    monkeypatch.setattr(ckpt.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):
        save(tmp_path, 2, model, optimizer)
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == [first]
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(first, CONFIG).step == 1


def test_weights_and_optimizer_state_round_trip_exactly(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    folder = save(tmp_path, 3, model, optimizer)
    loaded = load_checkpoint(folder, CONFIG, network_signature({"generator": model}))

    restored, restored_optimizer = trained_model_and_optimizer(seed=1)
    restored.load_state_dict(loaded.weights["generator"])
    restored_optimizer.load_state_dict(loaded.optimizers["generator"])
    assert restored_optimizer.param_groups[0]["betas"] == (0.0, 0.999)
    x = torch.randn(4, 3)
    for net, opt in ((model, optimizer), (restored, restored_optimizer)):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)


def test_optimizer_structure_is_plain_json():
    _, optimizer = trained_model_and_optimizer()
    tensors, structure = flatten_optimizer_state("g", optimizer.state_dict())
    json.dumps(structure)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values()) and len(tensors) == 3 * 4
    rebuilt = unflatten_optimizer_state(json.loads(json.dumps(structure)), tensors)
    assert rebuilt["param_groups"] == optimizer.state_dict()["param_groups"]


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(5)
    tensors, states = capture_rng({"noise": generator})
    states = json.loads(json.dumps(states))
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator))
    restore_rng(tensors, states, {"noise": generator})
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator))
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


def test_config_mismatch_is_refused_naming_the_key(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    folder = save(tmp_path, 1, model, optimizer)
    with pytest.raises(CheckpointMismatch, match="'alpha' is 1.2 in the checkpoint, 1.0 here"):
        load_checkpoint(folder, CONFIG | {"alpha": 1.0})
    with pytest.raises(CheckpointMismatch, match="'noise.p_mean'"):
        load_checkpoint(folder, CONFIG | {"noise": {"p_mean": 0.0}})
    assert load_checkpoint(folder, CONFIG | {"steps": 99}, ignore_config_keys=["steps"]).step == 1


def test_a_setting_newer_than_the_checkpoint_reads_as_its_default(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    folder = save(tmp_path, 1, model, optimizer)
    defaults = {"lora_rank": 0}
    assert load_checkpoint(folder, CONFIG | {"lora_rank": 0}, config_defaults=defaults).step == 1
    with pytest.raises(CheckpointMismatch, match="'lora_rank' is 0 in the checkpoint, 8 here"):
        load_checkpoint(folder, CONFIG | {"lora_rank": 8}, config_defaults=defaults)
    with pytest.raises(CheckpointMismatch, match="'lora_rank' is missing in the checkpoint"):
        load_checkpoint(folder, CONFIG | {"lora_rank": 0})


def test_network_mismatch_is_refused_naming_the_parameter(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    folder = save(tmp_path, 1, model, optimizer)
    wider = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2))
    with pytest.raises(
        CheckpointMismatch,
        match=r"different network: 'generator\.0\.bias' is \[\[8\], 'float32'\] in the checkpoint, \[\[16\]",
    ):
        load_checkpoint(folder, CONFIG, network_signature({"generator": wider}))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "truncate_manifest", "delete"])
def test_damaged_checkpoint_is_refused_and_the_previous_one_still_loads(tmp_path, damage):
    model, optimizer = trained_model_and_optimizer()
    first = save(tmp_path, 1, model, optimizer)
    second = save(tmp_path, 2, model, optimizer)
    victim = second / ("state.json" if damage == "truncate_manifest" else "generator.safetensors")
    data = victim.read_bytes()
    if damage == "delete":
        victim.unlink()
    elif damage == "flip_byte":
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{second.name}.*{victim.name}.*{first.name} is untouched"):
        load_checkpoint(second, CONFIG)
    loaded = load_checkpoint(first, CONFIG, network_signature({"generator": model}))
    assert torch.equal(loaded.weights["generator"]["0.weight"], model[0].weight)


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    for step in range(1, 6):
        save(tmp_path, step, model, optimizer, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000004", "step_000005"]


def test_resaving_a_step_replaces_it(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    save(tmp_path, 1, model, optimizer, extra={"n": 1})
    save(tmp_path, 1, model, optimizer, extra={"n": 2})
    assert load_checkpoint(tmp_path / "step_000001").extra == {"n": 2}
    assert leftovers(tmp_path) == []
