"""What each method and teacher means by default: the official recipes, in one place for the core and the node.

A recipe belongs to the teacher's family (its noise schedule), not to the loss: SiD, SiD-LSG and SIM on a
Stable Diffusion teacher all start at t = 625 with lr 1e-6. Sources (DESIGN.md 3c): SiD's CIFAR-10 launch
script (Zhou et al. 2024, arXiv 2404.04057) for EDM teachers, SiD-LSG's SD1.5 launch script (arXiv 2406.01561)
for SD teachers, SIM-DiT (Luo et al. 2024, arXiv 2410.16794) for PixArt-alpha. Values marked ``pack`` in
``PACK_CHOICES`` have no official setting and are the pack's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .parametrization import DDPM_TABLES, DiscreteSchedule


@dataclass(frozen=True)
class Recipe:
    """The settings of one teacher family's official distillation run."""

    name: str
    source: str
    view: str  # "edm": continuous sigma draws; "ddpm": integer timesteps on ``ddpm_table``
    ddpm_table: str | None
    init_timestep: int | None  # the generator's timestep (DDPM teachers that define one)
    init_sigma_exact: float | None  # the generator's sigma where the recipe gives a sigma
    lr: float  # generator and fake score
    alpha: float  # SiD's alpha (SIM does not use it)
    ema_halflife_kimg: float  # in thousands of images; the official scripts' --ema is in millions

    def init_sigma(self) -> float:
        """The generator's input noise level: x = G(init_sigma z, init_sigma)."""
        if self.init_timestep is None:
            return self.init_sigma_exact
        return float(DiscreteSchedule.named(self.ddpm_table).sigma(self.init_timestep))


RECIPES = {
    "edm": Recipe("edm", "SiD, CIFAR-10 (official launch script)", "edm", None, None, 2.5,
                  lr=1e-5, alpha=1.2, ema_halflife_kimg=500.0),
    "sd": Recipe("sd", "SiD-LSG, SD1.5 (official launch script)", "ddpm", "sd", 625, None,
                 lr=1e-6, alpha=1.0, ema_halflife_kimg=50.0),
    "pixart": Recipe("pixart", "SIM-DiT-600M, PixArt-alpha (input 2.5 z)", "ddpm", "pixart", None, 2.5,
                     lr=1e-6, alpha=1.0, ema_halflife_kimg=50.0),
}

PACK_CHOICES = {"pixart": ("lr", "alpha", "ema_halflife_kimg")}
"""Settings no official code publishes, chosen by the pack (SIM-DiT's training script is not public)."""

METHOD_VIEWS = {"sid": "edm", "sid-lsg": "ddpm", "sim": "edm"}
"""The view a method defaults to without a teacher: SiD-LSG is a text-to-image (SD) method."""


def recipe_for(view: str, ddpm_table: str = "sd") -> Recipe:
    """The recipe of a teacher seen in ``view`` (and, for DDPM teachers, with that alpha-bar table)."""
    if ddpm_table not in DDPM_TABLES:
        raise ValueError(f"ddpm_table must be one of {tuple(DDPM_TABLES)}, got {ddpm_table!r}")
    if view not in ("edm", "ddpm"):
        raise ValueError(f"noise view must be 'edm' or 'ddpm', got {view!r}")
    return RECIPES["edm" if view == "edm" else ddpm_table]

