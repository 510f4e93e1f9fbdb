"""The distillation loop: one fake-score step and one generator step per iteration (SiD, SiD-LSG, SIM).

Three networks: the teacher ``D_phi`` (frozen), the fake score ``D_psi`` and the generator ``G``;
the last two start as copies of the teacher unless given. The generator is a denoiser used at one
noise level: ``x = G(init_sigma * z, init_sigma, cond)``. Each iteration draws fresh noise for both
steps from the run's own ``torch.Generator``, so a run is a pure function of its seed and a resumed
run repeats an uninterrupted one step for step.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .checkpoint import (
    STATE_FILE,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    network_signature,
    save_checkpoint,
)
from .conditions import slice_rows
from .ema import EMA
from .lora import add_lora_adapters, frozen_base_names, has_lora, lora_student
from .losses import (
    LSGScales,
    drop_prompts,
    edm_fake_score_loss,
    eps_fake_score_loss,
    guided_denoise,
    sid_generator_loss,
    sim_pseudo_huber_loss,
)
from .memory import adam, checkpoint_blocks
from .noise_levels import NoiseLevels
from .parametrization import Denoiser, DiscreteSchedule, append_dims, one_step_generate
from .recipes import METHOD_VIEWS, RECIPES, Recipe, recipe_for
from .sharding import (
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    load_full_state_dict,
    local_tensor,
    shard_network,
)

METHODS = ("sid", "sid-lsg", "sim")
SIM_WEIGHTINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigma2": lambda sigma: sigma**2,  # our default: the SiD-like term over sqrt(||D_phi - D_psi||^2 + c^2 sigma^4)
    "uniform": lambda sigma: torch.ones_like(sigma),
}


class DivergenceError(RuntimeError):
    """For too many steps in a row the run produced nothing finite, or generator samples out of the data's range."""


def _rms_per_sample(x: Tensor) -> Tensor:
    return x.detach().float().flatten(1).square().mean(dim=1).sqrt()


@dataclass
class DistillConfig:
    """Everything that defines a distillation run; a setting left None takes the official recipe's value for the
    method's view (``DistillConfig(method="sid-lsg")`` is SiD-LSG's SD1.5 run: DDPM view, t = 625, alpha 1, lr 1e-6,
    EMA half-life 50 kimg)."""

    method: str = "sid"
    teacher_id: str = ""  # names the teacher's weights (file, hash); a resume with another teacher is refused
    steps: int = 1000
    batch_size: int = 8
    sample_shape: tuple = (3, 32, 32)
    # None: the recipe's value for the method's view and the DDPM table (distill/recipes.py)
    lr_generator: float | None = None
    lr_fake_score: float | None = None
    adam_betas: tuple = (0.0, 0.999)
    adam_eps: float = 1e-8
    init_sigma: float | None = None
    alpha: float | None = None
    # noise levels: "edm" (sigma draws) or "ddpm" (integer timesteps on ``ddpm_table``); None: the method's
    view: str | None = None
    ddpm_table: str = "sd"  # "sd" (SD1.x/2.x/SDXL) | "pixart" (PixArt-alpha)
    fake_score_loss: str = "auto"  # "edm" (x0, EDM weight) | "eps" (epsilon MSE) | "auto": by view
    sigma_data: float = 0.5
    p_mean: float = -1.2  # the fake score's ln(sigma) law at sigma_data 0.5; it scales with sigma_data
    p_std: float = 1.2
    tmax: float = 800
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    t_min: int = 20
    t_max: int = 980
    # SiD-LSG guidance scales (used when method == "sid-lsg")
    k_train_fake: float = 1.0
    k_eval_fake: float = 1.0
    k_eval_real: float = 1.0
    prompt_dropout: float = 0.1
    # SIM
    sim_c: float = 1e-3
    sim_weighting: str = "sigma2"
    # EMA: half-life in thousands of images (EDM; None: the recipe's) or a fixed beta
    ema_halflife_kimg: float | None = None
    ema_rampup_ratio: float | None = 0.05
    ema_beta: float | None = None
    seed: int = 0
    max_nonfinite_steps: int = 5  # bad steps in a row (no finite sample, or samples out of range) before stopping
    max_sample_rms: float | None = None  # a generator sample with a larger RMS is out of range; None: 20 sigma_data
    checkpoint_every: int = 0
    keep_checkpoints: int | None = 3
    preview_every: int = 0
    preview_count: int = 4
    # memory: batch_size is one micro-batch; each optimizer step sees grad_accumulation of them (per process)
    grad_accumulation: int = 1
    gradient_checkpointing: bool = False  # recompute the blocks' activations of generator and fake score in backward
    fused_adamw: bool = False  # the fused AdamW kernel (weight decay 0: the same update as Adam)
    lora_rank: int = 0  # 0: train every weight; > 0: LoRA adapters of this rank, the base weights frozen

    # fields a resumed run may change without being a different run
    RESUMABLE: ClassVar[tuple] = (
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "preview_every",
        "preview_count",
        "max_nonfinite_steps",
        "max_sample_rms",
        "gradient_checkpointing",
    )

    def __post_init__(self):
        self.sample_shape = tuple(self.sample_shape)
        self.adam_betas = tuple(self.adam_betas)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.fake_score_loss not in ("auto", "edm", "eps"):
            raise ValueError(f"fake_score_loss must be 'auto', 'edm' or 'eps', got {self.fake_score_loss!r}")
        if self.sim_weighting not in SIM_WEIGHTINGS:
            raise ValueError(f"sim_weighting must be one of {tuple(SIM_WEIGHTINGS)}, got {self.sim_weighting!r}")
        if self.grad_accumulation < 1 or self.lora_rank < 0:
            raise ValueError(f"grad_accumulation must be >= 1 and lora_rank >= 0, got {self.grad_accumulation} and "
                             f"{self.lora_rank}")
        self._apply_recipe()
        if self.ema_halflife_kimg is not None and not self.ema_halflife_kimg > 0:
            raise ValueError(f"ema_halflife_kimg must be above 0 (thousands of images), got {self.ema_halflife_kimg}; "
                             f"the official runs use {RECIPES['edm'].ema_halflife_kimg:g} (SiD, CIFAR-10) and "
                             f"{RECIPES['sd'].ema_halflife_kimg:g} (SiD-LSG, SD1.5), or set ema_beta for a fixed decay")
        if self.max_sample_rms is None:
            self.max_sample_rms = 20 * self.sigma_data
        self.noise_levels()  # validates the view

    def _apply_recipe(self) -> None:
        """Fill every setting left None from the official recipe of the method's view (distill/recipes.py)."""
        if self.view is None:
            self.view = METHOD_VIEWS[self.method]
        recipe = self.recipe()
        for name, value in (("lr_generator", recipe.lr), ("lr_fake_score", recipe.lr), ("alpha", recipe.alpha),
                            ("init_sigma", recipe.init_sigma())):
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.ema_halflife_kimg is None and self.ema_beta is None:
            self.ema_halflife_kimg = recipe.ema_halflife_kimg

    def recipe(self) -> Recipe:
        return recipe_for(self.view, self.ddpm_table)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DistillConfig keys: {unknown}")
        return cls(**d)

    def noise_levels(self) -> NoiseLevels:
        return NoiseLevels(
            view=self.view,
            sigma_data=self.sigma_data,
            p_mean=self.p_mean,
            p_std=self.p_std,
            tmax=self.tmax,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            rho=self.rho,
            t_min=self.t_min,
            t_max=self.t_max,
            schedule=DiscreteSchedule.named(self.ddpm_table) if self.view == "ddpm" else None,
        )

    def lsg_scales(self) -> LSGScales:
        if self.method != "sid-lsg":
            return LSGScales()
        return LSGScales(
            train_fake=self.k_train_fake,
            eval_fake=self.k_eval_fake,
            eval_real=self.k_eval_real,
            prompt_dropout=self.prompt_dropout,
        )

    def resolved_fake_score_loss(self) -> str:
        if self.fake_score_loss != "auto":
            return self.fake_score_loss
        return "eps" if self.view == "ddpm" else "edm"


def _finite_rows(*tensors: Tensor) -> Tensor:
    """Per-sample mask: every value of the sample is finite in every tensor."""
    keep = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        keep &= t.detach().flatten(1).isfinite().all(dim=1)
    return keep


def _sanitize_grads(module: nn.Module) -> None:
    """SiD's guard: NaN gradients to 0, infinities to +-1e5."""
    for p in module.parameters():
        if p.grad is not None:
            grad = local_tensor(p.grad)
            torch.nan_to_num(grad, nan=0.0, posinf=1e5, neginf=-1e5, out=grad)


def _data_parallel(module: nn.Module, world_size: int) -> nn.Module:
    """DistributedDataParallel around a trained network when there are several processes (gradients averaged)."""
    if world_size == 1:
        return module
    return nn.parallel.DistributedDataParallel(module)


def _gradient_sync(trained: nn.Module, sync: bool):
    """No gradient reduction for all but the last micro-batch of a step (DDP's no_sync, FSDP's switch)."""
    if hasattr(trained, "set_requires_gradient_sync"):  # FSDP
        trained.set_requires_gradient_sync(sync)
    if sync or not isinstance(trained, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return trained.no_sync()


def _trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA adapters where the network has some, else every parameter."""
    if has_lora(module):
        return [p for name, p in module.named_parameters() if ".lora_" in name]
    return list(module.parameters())


def _set_requires_grad(parameters: list[nn.Parameter], flag: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(flag)


def checkpointable_blocks(network: nn.Module) -> list[nn.Module]:
    """The blocks a network names for gradient checkpointing (its ``checkpointable_blocks()`` method)."""
    if not hasattr(network, "checkpointable_blocks"):
        raise TypeError(f"gradient checkpointing needs the network to name its blocks; {type(network).__name__} "
                        "has no checkpointable_blocks() method")
    return network.checkpointable_blocks()


def _teacher_weights_in(network: nn.Module, teacher: Any) -> list[nn.Parameter]:
    """The parameters of ``network`` that are the teacher's own tensors (a LoRA student's base weights)."""
    if not isinstance(teacher, nn.Module):
        return []
    teacher_ids = {id(parameter) for parameter in teacher.parameters()}
    return [parameter for parameter in network.parameters() if id(parameter) in teacher_ids]


def _module_or_none(net: Any) -> nn.Module | None:
    return net if isinstance(net, nn.Module) else None


class Distiller:
    """Holds the three networks, two Adam optimisers, the EMA and the run's RNG; steps and checkpoints."""

    def __init__(
        self,
        teacher: Denoiser,
        config: DistillConfig,
        generator: nn.Module | None = None,
        fake_score: nn.Module | None = None,
        cond_sampler: Callable[[int, torch.Generator], Any] | None = None,
        uncond: Any = None,
        rank: int = 0,
        world_size: int = 1,
        fsdp: bool = False,
    ):
        """``rank`` / ``world_size``: data parallelism; ``config.batch_size`` is then the batch of each process.
        ``fsdp``: shard generator and fake score across the processes (FSDP) instead of replicating them (DDP)."""
        if (generator is None or fake_score is None) and not isinstance(teacher, nn.Module):
            raise TypeError("a teacher that is not an nn.Module cannot be copied: pass generator and fake_score")
        lsg = config.lsg_scales()
        if {lsg.train_fake, lsg.eval_fake, lsg.eval_real} != {1.0} and (cond_sampler is None or uncond is None):
            raise ValueError("SiD-LSG guidance (a k != 1) needs a cond_sampler and an unconditional input (uncond)")
        self.config = config
        self.sharded = fsdp and world_size > 1
        self.teacher = teacher
        if isinstance(teacher, nn.Module):
            teacher.eval().requires_grad_(False)
        self.generator = self._student(generator)
        self.fake_score = self._student(fake_score)
        # LoRA base weights stay the teacher's: checkpoints hold the adapters only
        self.frozen_weight_names = {"generator": frozen_base_names(self.generator),
                                    "fake_score": frozen_base_names(self.fake_score)}
        reference = next(self.generator.parameters())
        self.device, self.dtype = reference.device, reference.dtype
        self.ema = EMA(self.generator, config.ema_halflife_kimg, config.ema_rampup_ratio, config.ema_beta,
                       constant=_teacher_weights_in(self.generator, teacher))
        if config.gradient_checkpointing:
            for network in (self.generator, self.fake_score):
                checkpoint_blocks(network, checkpointable_blocks(network))
        if self.sharded:  # before the optimizers: sharding replaces the parameters
            for network in (self.generator, self.fake_score):
                shard_network(network)

        self.generator_parameters = _trainable_parameters(self.generator)
        self.fake_score_parameters = _trainable_parameters(self.fake_score)
        self.generator.train()
        self.fake_score.train()
        _set_requires_grad(self.generator_parameters + self.fake_score_parameters, True)
        adam_settings = dict(betas=config.adam_betas, eps=config.adam_eps, fused=config.fused_adamw)
        self.opt_generator = adam(self.generator_parameters, config.lr_generator, **adam_settings)
        self.opt_fake_score = adam(self.fake_score_parameters, config.lr_fake_score, **adam_settings)
        self.rank, self.world_size = rank, world_size
        self.local_batch = config.batch_size * config.grad_accumulation
        self.global_batch = self.local_batch * world_size
        replicated = world_size if not self.sharded else 1
        self.trained_generator = _data_parallel(self.generator, replicated)
        self.trained_fake_score = _data_parallel(self.fake_score, replicated)

        self.noise = config.noise_levels()
        self.lsg = lsg
        self.cond_sampler = cond_sampler
        self.uncond = uncond
        self.rng = torch.Generator(device=self.device).manual_seed(config.seed)

        preview_rng = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.preview_z = torch.randn(
            (config.preview_count, *config.sample_shape), generator=preview_rng, device=self.device, dtype=self.dtype
        )
        self.preview_cond = cond_sampler(config.preview_count, preview_rng) if cond_sampler else None

        self.step = 0
        self.cur_nimg = 0
        self.dropped_samples = 0
        self.nonfinite_streak = 0  # bad steps in a row: no finite sample, or most samples out of range
        self.out_of_range = 0  # samples of this step's generator batch with an RMS above max_sample_rms

    # --- sampling ----------------------------------------------------------------------------

    def _randn(self, shape) -> Tensor:
        return torch.randn(shape, generator=self.rng, device=self.device, dtype=self.dtype)

    def _sample_cond(self, n: int) -> Any:
        return self.cond_sampler(n, self.rng) if self.cond_sampler else None

    def _generate(self, module: nn.Module, z: Tensor, cond: Any) -> Tensor:
        return one_step_generate(module, z, self.config.init_sigma, cond)

    @torch.no_grad()
    def preview(self) -> Tensor:
        """The EMA generator on a fixed batch of noise (and conditions): comparable across steps."""
        return self._generate(self.ema.module, self.preview_z, self.preview_cond)

    @torch.no_grad()
    def sample(
        self, n: int, cond: Any = None, generator: torch.Generator | None = None, use_ema: bool = True
    ) -> Tensor:
        """n one-step samples from the EMA (or live) generator."""
        z = torch.randn((n, *self.config.sample_shape), generator=generator, device=self.device, dtype=self.dtype)
        return self._generate(self.ema.module if use_ema else self.generator, z, cond)

    # --- the two steps -----------------------------------------------------------------------

    def _fake_score_loss(self, denoised: Tensor, x_g: Tensor, x_t: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        if self.config.resolved_fake_score_loss() == "eps":
            return eps_fake_score_loss(denoised, x_t, noise, sigma)
        return edm_fake_score_loss(denoised, x_g, sigma, self.config.sigma_data)

    def _generator_loss(self, y_real: Tensor, y_fake: Tensor, x_g: Tensor, sigma: Tensor) -> Tensor:
        cfg = self.config
        if cfg.method == "sim":
            weight = SIM_WEIGHTINGS[cfg.sim_weighting](sigma)
            return sim_pseudo_huber_loss(y_real, y_fake, x_g, sigma, cfg.sim_c, weight)
        return sid_generator_loss(y_real, y_fake, x_g, cfg.alpha)

    def fake_score_step(self) -> tuple[float, int]:
        """Train D_psi on sg(G(z)) at sigma ~ the fake-score law (guided by k1 under LSG); (loss, kept)."""
        draws = self.global_batch
        cond = self._sample_cond(draws)
        z = self._randn((draws, *self.config.sample_shape))
        sigma = self.noise.fake_score_sigmas(draws, self.rng, self.device).to(self.dtype)
        noise = self._randn((draws, *self.config.sample_shape))
        k1 = self.lsg.train_fake
        if self.lsg.drops_prompts and self.uncond is not None:  # the image is generated from the dropped prompt too
            cond = drop_prompts(cond, self.uncond, self.lsg.prompt_dropout, self.rng)

        self.generator.eval()
        self.fake_score.train()
        _set_requires_grad(self.fake_score_parameters, True)
        self.opt_fake_score.zero_grad(set_to_none=True)
        total, kept = 0.0, 0
        micro_batches = self._micro_batches(cond, z, sigma, noise)
        for last, (cond, z, sigma, noise) in micro_batches:
            with torch.no_grad():
                x_g = self._generate(self.generator, z, cond)
            sigma_b = append_dims(sigma, x_g.ndim)
            x_t = x_g + sigma_b * noise
            with _gradient_sync(self.trained_fake_score, last):
                denoised = guided_denoise(self.trained_fake_score, x_t, sigma_b, cond, self.uncond, k1)
                per_sample = self._fake_score_loss(denoised, x_g, x_t, noise, sigma)
                keep = _finite_rows(x_g, denoised) & per_sample.detach().isfinite()
                loss = per_sample[keep].sum() / self.local_batch
                loss.backward()
            total += loss.item()
            kept += int(keep.sum())
        kept = self._all_ranks_sum(kept)
        self._step(self.fake_score, self.opt_fake_score, kept)
        self.fake_score.eval()
        _set_requires_grad(self.fake_score_parameters, False)
        return self._mean_over_ranks(total) if kept else math.nan, kept

    def generator_step(self) -> tuple[float, int]:
        """Update G with the method's loss; gradient flows through x_g and x_t into both score nets' inputs."""
        draws = self.global_batch
        cond = self._sample_cond(draws)
        z = self._randn((draws, *self.config.sample_shape))
        sigma = self.noise.generator_sigmas(draws, self.rng, self.device).to(self.dtype)
        noise = self._randn((draws, *self.config.sample_shape))

        self.generator.train()
        _set_requires_grad(self.generator_parameters, True)
        self.fake_score.eval()
        _set_requires_grad(self.fake_score_parameters, False)
        self.opt_generator.zero_grad(set_to_none=True)
        total, kept, out_of_range = 0.0, 0, 0
        micro_batches = self._micro_batches(cond, z, sigma, noise)
        for last, (cond, z, sigma, noise) in micro_batches:
            with _gradient_sync(self.trained_generator, last):
                x_g = self._generate(self.trained_generator, z, cond)
                out_of_range += int((_rms_per_sample(x_g) > self.config.max_sample_rms).sum())
                sigma_b = append_dims(sigma, x_g.ndim)
                x_t = x_g + sigma_b * noise
                y_real = guided_denoise(self.teacher, x_t, sigma_b, cond, self.uncond, self.lsg.eval_real)
                y_fake = guided_denoise(self.fake_score, x_t, sigma_b, cond, self.uncond, self.lsg.eval_fake)
                keep = _finite_rows(x_g, y_real, y_fake)
                per_sample = self._generator_loss(y_real[keep], y_fake[keep], x_g[keep], sigma[keep])
                finite = per_sample.detach().isfinite()
                loss = per_sample[finite].sum() / self.local_batch
                loss.backward()
            total += loss.item()
            kept += int(finite.sum())
        kept = self._all_ranks_sum(kept)
        self.out_of_range = self._all_ranks_sum(out_of_range)
        self._step(self.generator, self.opt_generator, kept)
        self.ema.update(self.generator, draws, self.cur_nimg)
        return self._mean_over_ranks(total) if kept else math.nan, kept

    def _step(self, module: nn.Module, optimizer: torch.optim.Optimizer, kept: int) -> None:
        """Optimizer step on the accumulated gradients, unless no rank kept a finite sample (all ranks agree)."""
        if kept:
            _sanitize_grads(module)
            optimizer.step()

    # --- data parallelism: every rank draws the whole batch from the same RNG and keeps its slice ----------

    def _micro_batches(self, *values) -> list[tuple[bool, tuple]]:
        """(last, micro-batch) pairs: this rank's slice of the global draws, cut into grad_accumulation pieces."""
        values = self._local(*values)
        pieces = self.config.grad_accumulation
        if pieces == 1:
            return [(True, values)]
        batch = self.config.batch_size
        return [(i == pieces - 1, tuple(slice_rows(v, i * batch, (i + 1) * batch) for v in values))
                for i in range(pieces)]

    def _local(self, *values):
        """This rank's slice of globally drawn tensors or conditions (all of them when there is one process)."""
        if self.world_size == 1:
            return values
        batch = self.local_batch
        return tuple(slice_rows(v, self.rank * batch, (self.rank + 1) * batch) for v in values)

    def _all_ranks_sum(self, count: int) -> int:
        if self.world_size == 1:
            return count
        total = torch.tensor([count], device=self.device)
        torch.distributed.all_reduce(total)
        return int(total.item())

    def _mean_over_ranks(self, value: float) -> float:
        if self.world_size == 1:
            return value
        total = torch.tensor([value], device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(total)
        return float(total.item()) / self.world_size

    def train_step(self) -> dict:
        """One iteration: fake-score step, generator step, EMA; raises DivergenceError on a long non-finite run."""
        batch = self.global_batch
        fake_loss, fake_kept = self.fake_score_step()
        generator_loss, generator_kept = self.generator_step()
        self.step += 1
        self.cur_nimg += batch
        dropped = 2 * batch - fake_kept - generator_kept
        self.dropped_samples += dropped
        nothing_finite = min(fake_kept, generator_kept) == 0
        mostly_out_of_range = 2 * self.out_of_range > batch
        self.nonfinite_streak = self.nonfinite_streak + 1 if nothing_finite or mostly_out_of_range else 0
        if self.nonfinite_streak >= self.config.max_nonfinite_steps:
            if mostly_out_of_range:
                raise DivergenceError(
                    f"distillation diverged: {self.nonfinite_streak} steps in a row (up to step {self.step}) most "
                    f"generator samples left the data's range (RMS above max_sample_rms = "
                    f"{self.config.max_sample_rms:g}; {self.out_of_range} of {batch} in the last step), although "
                    f"finite; lower the learning rates (or alpha) or resume from an earlier checkpoint"
                )
            raise DivergenceError(
                f"distillation diverged: {self.nonfinite_streak} steps in a row (up to step {self.step}) had no finite "
                f"sample ({self.dropped_samples} non-finite samples dropped so far); lower the learning rates or "
                f"resume from an earlier checkpoint"
            )
        return {"fake_score": fake_loss, "generator": generator_loss, "dropped": dropped,
                "out_of_range": self.out_of_range}

    # --- the loop ----------------------------------------------------------------------------

    def train(
        self,
        run_dir: Path | None = None,
        on_progress: Callable[[int, int, dict], None] | None = None,
        on_preview: Callable[[int, Tensor], None] | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[dict]:
        """Run until ``config.steps`` (or should_stop()); checkpoint every ``checkpoint_every`` and at the end."""
        cfg = self.config
        history: list[dict] = []
        saved_step = None
        while self.step < cfg.steps:
            if should_stop is not None and should_stop():
                break
            losses = self.train_step()
            history.append(losses)
            if on_progress is not None:
                on_progress(self.step, cfg.steps, losses)
            if on_preview is not None and cfg.preview_every and self.step % cfg.preview_every == 0:
                on_preview(self.step, self.preview())
            # no periodic checkpoint inside a run of bad steps: if the run diverges (DivergenceError), the folder's
            # latest checkpoint is the last good one
            if (run_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                    and self.nonfinite_streak == 0):
                self.save(run_dir)
                saved_step = self.step
                if on_checkpoint is not None:
                    on_checkpoint(self.step)
        if run_dir is not None and history and saved_step != self.step:
            self.save(run_dir)
            if on_checkpoint is not None:
                on_checkpoint(self.step)
        return history

    def _student(self, given: nn.Module | None) -> nn.Module:
        """The given network, or a copy of the teacher; with LoRA, adapters on it. A LoRA copy shares the teacher's
        (frozen) base weights, except under FSDP, which replaces the weights of the modules it shards."""
        rank, seed = self.config.lora_rank, self.config.seed
        if given is None and rank and not self.sharded:
            return lora_student(self.teacher, rank, seed)
        network = given if given is not None else copy.deepcopy(self.teacher)
        return add_lora_adapters(network, rank, seed) if rank else network

    # --- checkpoints -------------------------------------------------------------------------

    def network_signature(self) -> dict:
        nets = {"generator": self.generator, "fake_score": self.fake_score, "teacher": _module_or_none(self.teacher)}
        return network_signature({name: net for name, net in nets.items() if net is not None})

    def save(self, run_dir: Path) -> Path:
        """Write a checkpoint of the whole run state into ``run_dir`` (atomically; rank 0 writes, all ranks call);
        of LoRA networks, the adapters (their frozen base weights are the teacher's)."""
        frozen = self.frozen_weight_names
        weights = {"generator": full_state_dict(self.generator, frozen["generator"]),
                   "fake_score": full_state_dict(self.fake_score, frozen["fake_score"]),
                   "generator_ema": self.ema.state_dict(frozen["generator"])}
        optimizers = {"generator": full_optimizer_state(self.opt_generator),
                      "fake_score": full_optimizer_state(self.opt_fake_score)}
        if self.rank != 0:
            return Path(run_dir)
        return save_checkpoint(
            run_dir,
            self.step,
            weights=weights,
            optimizers=optimizers,
            config=self.config.to_dict(),
            signature=self.network_signature(),
            generators={"noise": self.rng},
            extra={
                "cur_nimg": self.cur_nimg,
                "dropped_samples": self.dropped_samples,
                "nonfinite_streak": self.nonfinite_streak,
            },
            keep_last=self.config.keep_checkpoints,
        )

    def resume(self, path: Path) -> Path:
        """Continue from a checkpoint folder (or a run folder's latest); refuses another config or network."""
        path = Path(path)
        folder = path if (path / STATE_FILE).exists() else latest_checkpoint(path)
        if folder is None:
            raise CheckpointError(f"no checkpoint found in {path}")
        loaded = load_checkpoint(folder, self.config.to_dict(), self.network_signature(), DistillConfig.RESUMABLE,
                                 config_defaults=DistillConfig().to_dict())
        frozen = self.frozen_weight_names
        load_full_state_dict(self.generator, loaded.weights["generator"], frozen["generator"])
        load_full_state_dict(self.fake_score, loaded.weights["fake_score"], frozen["fake_score"])
        self.ema.load_state_dict(loaded.weights["generator_ema"], frozen["generator"])
        load_full_optimizer_state(self.opt_generator, loaded.optimizers["generator"])
        load_full_optimizer_state(self.opt_fake_score, loaded.optimizers["fake_score"])
        loaded.restore_rng({"noise": self.rng})
        self.step = loaded.step
        self.cur_nimg = loaded.extra["cur_nimg"]
        self.dropped_samples = loaded.extra["dropped_samples"]
        self.nonfinite_streak = loaded.extra["nonfinite_streak"]
        return folder
