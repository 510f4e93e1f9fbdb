"""Copies of a ComfyUI model's networks for training, without deep-copying ComfyUI's own objects.

A ``BaseModel`` holds, beside its networks, objects the pack does not own: the model config, the latent format,
the ``ModelPatcher`` that loaded it. Deep-copying those depends on how each host's classes answer attribute
look-ups (ComfyUI 0.28's config answers None for any missing attribute, ``__deepcopy__`` included, and
``copy.deepcopy`` then fails), and a copied patcher would be a second, detached one. So a copy here owns new
networks and weights (the modules, parameters and buffers) and shares everything else with the original.
"""

import copy

import torch

NETWORK_STATE = ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set")


def base_model_copy(base_model: torch.nn.Module, memo: dict | None = None) -> torch.nn.Module:
    """The ComfyUI model with copies of its submodules, parameters and buffers, sharing its plain attributes.

    ``memo`` is ``copy.deepcopy``'s: tensors it already maps (a LoRA student's frozen base weights, which are the
    teacher's own) stay shared. The copy is not loaded by any patcher (``current_patcher`` None, as ComfyUI
    leaves a model before a ModelPatcher loads it).
    """
    memo = {} if memo is None else memo
    if id(base_model) in memo:
        return memo[id(base_model)]
    copied = copy.copy(base_model)
    memo[id(base_model)] = copied
    for name, value in vars(base_model).items():
        if name not in NETWORK_STATE:
            memo.setdefault(id(value), value)  # shared, also where a submodule refers to it (the config)
    vars(copied).update({name: copy.deepcopy(vars(base_model)[name], memo) for name in NETWORK_STATE})
    if getattr(copied, "current_patcher", None) is not None:
        copied.current_patcher = None
    return copied
