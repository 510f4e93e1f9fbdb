"""LoRA adapters (peft) on the generator and fake score, and merging them back into plain weights."""

from __future__ import annotations

import copy

from torch import nn

LORA_LAYERS = (nn.Linear, nn.Conv2d)


def lora_targets(module: nn.Module) -> list[str]:
    """Names of the Linear and Conv2d layers of a network (attention, projections, convolutions)."""
    return [name for name, layer in module.named_modules() if name and isinstance(layer, LORA_LAYERS)]


def add_lora_adapters(module: nn.Module, rank: int, targets: list[str] | None = None) -> nn.Module:
    """Inject rank-``rank`` LoRA adapters (Hu et al. 2021) in place; only the adapters stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model  # optional dependency: only LoRA runs need it

    targets = lora_targets(module) if targets is None else targets
    if not targets:
        raise ValueError(f"{type(module).__name__} has no Linear or Conv2d layer to put LoRA adapters on")
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
    return inject_adapter_in_model(config, module)


def has_lora(module: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in module.named_parameters())


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
