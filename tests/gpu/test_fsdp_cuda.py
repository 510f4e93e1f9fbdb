"""FSDP2 (``fully_shard``) over NCCL, as a torchrun job shards the generator and fake score (distill/sharding.py).

One GPU gives a world of one process: NCCL runs every collective FSDP2 issues (all-gather of the parameters in
forward and backward, reduce-scatter of the gradients), with one shard. NCCL refuses two ranks on one GPU, so the
Distiller's own sharded path (it shards only when world_size > 1) needs a machine with two GPUs. The dry run uses gloo.
"""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
from onestep.distill.memory import adam
from onestep.distill.networks import EDMDenoiser
from onestep.distill.sharding import (
    full_optimizer_state,
    full_state_dict,
    is_sharded,
    load_full_state_dict,
    shard_network,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def process_group(scale, monkeypatch):
    backend = "gloo" if scale.dry else "nccl"
    if not scale.dry:
        torch.cuda.set_device(0)
        monkeypatch.setenv("NCCL_SOCKET_IFNAME", os.environ.get("NCCL_SOCKET_IFNAME", "lo"))  # one host, one rank
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield backend
    dist.destroy_process_group()


def train_step(network, optimizer, batch):
    x, sigma, labels, target = batch
    optimizer.zero_grad(set_to_none=True)
    loss = (network(x, sigma, labels) - target).square().mean()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_fsdp2_over_nccl_trains_like_the_unsharded_network(process_group, scale):
    assert dist.get_backend() == process_group
    device = scale.device
    torch.manual_seed(0)
    network = EDMDenoiser().to(device)
    with torch.no_grad():  # perturb the zero-initialised output layers, so every weight gets a gradient
        for parameter in network.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    twin = copy.deepcopy(network)
    shard_network(network)
    assert all(is_sharded(p) for p in network.parameters()), "every parameter is a DTensor after fully_shard"

    fused = not scale.dry  # the trainer's fused AdamW, on sharded (DTensor) parameters
    # eps 1e-3: Adam's first steps are lr * sign(gradient) where a gradient is far below eps, so rounding-level
    # differences of tiny gradients would flip whole steps; with this eps they stay rounding-level
    settings = dict(lr=1e-3, betas=(0.0, 0.999), eps=1e-3, fused=fused)
    sharded_adam, plain_adam = adam(network.parameters(), **settings), adam(twin.parameters(), **settings)
    generator = torch.Generator().manual_seed(1)
    for step in range(2):
        batch = (torch.randn(8, 1, 28, 28, generator=generator).to(device),
                 torch.exp(torch.randn(8, generator=generator)).to(device),
                 torch.randint(0, 10, (8,), generator=generator).to(device),
                 torch.randn(8, 1, 28, 28, generator=generator).to(device))
        sharded_loss, plain_loss = train_step(network, sharded_adam, batch), train_step(twin, plain_adam, batch)
        assert sharded_loss == pytest.approx(plain_loss, rel=1e-4), f"step {step}"

    gathered = full_state_dict(network)
    assert gathered.keys() == twin.state_dict().keys()
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(gathered[name], value, rtol=1e-4, atol=1e-6, msg=name)
    moments = full_optimizer_state(sharded_adam)["state"]
    assert moments and all(not is_sharded(v) for entry in moments.values() for v in entry.values())

    restored = EDMDenoiser().to(device)
    shard_network(restored)
    load_full_state_dict(restored, gathered)
    for name, value in full_state_dict(restored).items():
        assert torch.equal(value, gathered[name]), name
