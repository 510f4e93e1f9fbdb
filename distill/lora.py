"""LoRA adapters (peft) on the generator and fake score, and merging them back into plain weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

LORA_LAYERS = (nn.Linear, nn.Conv2d)


def lora_targets(module: nn.Module) -> list[str]:
    """Names of the Linear and Conv2d layers of a network (attention, projections, convolutions)."""
    return [name for name, layer in module.named_modules() if name and isinstance(layer, LORA_LAYERS)]


def adapter_parameter_count(module: nn.Module, rank: int) -> int:
    """Parameters of the rank-``rank`` adapters add_lora_adapters puts on ``module``: A (rank x fan-in) and
    B (fan-out x rank) per layer."""
    total = 0
    for name in lora_targets(module):
        weight = module.get_submodule(name).weight
        total += rank * (weight[0].numel() + weight.shape[0])
    return total


def add_lora_adapters(module: nn.Module, rank: int, seed: int = 0, targets: list[str] | None = None) -> nn.Module:
    """Inject rank-``rank`` LoRA adapters (Hu et al. 2021) in place; only the adapters stay trainable. peft draws
    their initial A matrices from the global RNG: they are drawn here from ``seed``, so every process and every
    resume starts from the same adapters, and the caller's RNG is left as it was."""
    from peft import LoraConfig, inject_adapter_in_model  # optional dependency: only LoRA runs need it

    targets = lora_targets(module) if targets is None else targets
    if not targets:
        raise ValueError(f"{type(module).__name__} has no Linear or Conv2d layer to put LoRA adapters on")
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return inject_adapter_in_model(config, module)


def lora_student(teacher: nn.Module, rank: int, seed: int = 0) -> nn.Module:
    """A copy of the teacher with LoRA adapters whose frozen base weights are the teacher's own tensors (not
    copies): generator, fake score and their EMA then hold one network between them, plus adapters."""
    own_weights = {id(parameter): parameter for parameter in teacher.parameters()}
    return add_lora_adapters(copy.deepcopy(teacher, memo=own_weights), rank, seed)


def has_lora(module: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in module.named_parameters())


def frozen_base_names(module: nn.Module) -> set[str]:
    """A LoRA network's parameters other than its adapters: frozen at the teacher's values, so checkpoints leave
    them out (a resume checks the teacher is the same). Empty for a network without LoRA."""
    if not has_lora(module):
        return set()
    return {name for name, _ in module.named_parameters() if ".lora_" not in name}


def merged_copy(module: nn.Module) -> nn.Module:
    """A copy with every LoRA adapter merged into its base layer and removed: the plain network's keys and output."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(module)
    for name, layer in list(merged.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name), child, layer.get_base_layer())
    return merged
