"""Seconds per distillation iteration and peak memory, per method, in one run.

    python benchmarks/trainer.py                          # CPU: the pack's Fashion-MNIST-size EDM network, batch 8
    python benchmarks/trainer.py --model sd15 --device cuda --batch 8 --size 512 --precision bf16   # GPU, SD1.5
    python benchmarks/trainer.py --grad-checkpointing --lora-rank 8 --fused --grad-accumulation 2  # memory options
    python benchmarks/trainer.py --model sd15 --size 64 --batch 1 --lora-rank 4 --methods sid   # SD1.5 LoRA, CPU
    python benchmarks/trainer.py --dry-run DIR --methods sid   # the SD1.5 path on a tiny UNet, CPU; result in DIR only

Each method runs in its own process (so peak memory is its own): a few warm-up iterations, then timed ones.
CPU peak memory is the process's maximum resident set; GPU peak memory is torch's peak allocation.
The trained copies are float32 whatever dtype ComfyUI loads the teacher in (as the trainer node keeps them); the
generator's EMA is on (half-life 0.5 kimg) in every run.
"""

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_dry_run_argument, describe_device, set_dry_run, write_result  # noqa: E402
from pack_loader import load_pack  # noqa: E402

METHODS = ("sid", "sid-lsg", "sim")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist", choices=["fmnist", "sd15", "tiny-sd15"],
                        help="tiny-sd15: the SD1.5 code path on the tests' width-32 UNet (dry runs)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="pixels (default 28 fmnist, 512 sd15)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (0: full fine-tuning)")
    parser.add_argument("--fused", action="store_true", help="fused AdamW")
    parser.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches of --batch per step")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="which methods to time")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # set for the child processes
    parser.add_argument("--result-name", default="trainer", help="results/<name>.json")
    add_dry_run_argument(parser)
    args = parser.parse_args(argv)
    if args.dry_run is not None:
        set_dry_run(args.dry_run)
        args.model, args.device, args.batch, args.size, args.warmup, args.iterations = "tiny-sd15", "cpu", 2, 32, 1, 1
    return args


def build(args):
    """(teacher denoiser, cond_sampler, uncond, sample_shape, init_sigma, view)."""
    import torch

    if args.model == "fmnist":
        from onestep.distill.networks import EDMDenoiser

        teacher = EDMDenoiser().to(args.device).eval().requires_grad_(False)
        labels = torch.arange(10, device=args.device)
        size = args.size or 28
        return teacher, lambda n, g: labels[torch.randint(10, (n,), generator=g, device=g.device)], \
            torch.tensor([10], device=args.device), (1, size, size), 2.5, "edm"
    import comfy_host

    comfy_host.import_comfy(cpu=args.device == "cpu")
    import comfy.sd
    from onestep.nodes.distill_trainer import ComfyDenoiser, set_unet_dtype, trainable_copy
    from random_models import random_sd15_unet_state_dict

    if args.model == "tiny-sd15":
        import comfy.supported_models

        patcher = comfy_host.tiny_model_patcher(comfy.supported_models.SD15)
    else:
        patcher = comfy.sd.load_diffusion_model_state_dict(random_sd15_unet_state_dict())
    teacher = trainable_copy(ComfyDenoiser(patcher.model, "c_crossattn"))
    # float32 master weights, as the trainer node keeps them (ComfyUI loads the UNet in fp16 on a GPU)
    set_unet_dtype(teacher.base_model, torch.float32)
    teacher = teacher.to(args.device).requires_grad_(False)
    context_dim = patcher.model.model_config.unet_config["context_dim"]
    prompts = torch.randn(16, 77, context_dim, device=args.device)
    uncond = torch.zeros(1, 77, context_dim, device=args.device)
    size = (args.size or 512) // 8
    sigma_625 = float(patcher.get_model_object("model_sampling").sigma(torch.tensor(625.0)))
    return teacher, lambda n, g: prompts[torch.randint(16, (n,), generator=g, device=g.device)], \
        uncond, (4, size, size), sigma_625, "ddpm"


def measure(args) -> dict:
    import torch

    load_pack()
    from onestep.distill.training import DistillConfig, Distiller

    teacher, cond_sampler, uncond, shape, init_sigma, view = build(args)
    guidance = 1.5 if args.method == "sid-lsg" else 1.0
    config = DistillConfig(method=args.method, batch_size=args.batch, sample_shape=shape, init_sigma=init_sigma,
                           view=view, alpha=1.2 if view == "edm" else 1.0, k_train_fake=guidance,
                           k_eval_fake=guidance, k_eval_real=guidance, steps=args.warmup + args.iterations,
                           gradient_checkpointing=args.grad_checkpointing, lora_rank=args.lora_rank,
                           fused_adamw=args.fused, grad_accumulation=args.grad_accumulation)
    distiller = Distiller(teacher, config, cond_sampler=cond_sampler, uncond=uncond)
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with autocast:
        for _ in range(args.warmup):
            distiller.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(args.iterations):
            distiller.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.iterations
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    weight_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in distiller.generator.parameters()})
    return {"method": args.method, "s_per_it": seconds, "peak_gb": peak_gb,
            "resident_gb": resident_gb() if device.type == "cpu" else None,
            "weight_dtypes": weight_dtypes, "ema_halflife_kimg": config.ema_halflife_kimg,
            "fused": bool(distiller.opt_generator.defaults.get("fused"))}


def resident_gb() -> float:
    """The process's resident set now (Linux): on the CPU the peak includes loading the model, this what training
    holds after its iterations."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**30


def describe_row(row: dict) -> str:
    text = f"{row['method']} {row['s_per_it']:.3f} s/it, {row['peak_gb']:.2f} GB"
    if row["resident_gb"] is not None:
        text += f" (held {row['resident_gb']:.2f} GB after the timed iterations)"
    return text


def setting_text(args, size: int, row: dict) -> str:
    """The exact setting in words: batch, resolution, precision, checkpointing, LoRA or full, optimizer, EMA."""
    precision = "bf16 autocast" if args.precision == "bf16" else "fp32"
    return (f"batch {args.batch * args.grad_accumulation}"
            + (f" ({args.grad_accumulation} x {args.batch})" if args.grad_accumulation > 1 else "")
            + f", {size}x{size} px, {precision} with {'/'.join(row['weight_dtypes'])} weights, "
            + f"gradient checkpointing {'on' if args.grad_checkpointing else 'off'}, "
            + (f"LoRA rank {args.lora_rank}" if args.lora_rank else "full fine-tuning")
            + f", {'fused AdamW' if row['fused'] else 'Adam'}, EMA half-life {row['ema_halflife_kimg']} kimg")


def main() -> int:
    args = parse_args()
    if args.method:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    for method in args.methods:
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--method", method],
                               capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stdout[-3000:] + child.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"the {method} run failed (exit {child.returncode})")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    import torch

    device = torch.device(args.device)
    model = {"fmnist": "Fashion-MNIST EDM UNet (random weights)", "sd15": "SD1.5-size UNet (random weights)",
             "tiny-sd15": "tiny SD1.5-structured UNet (dry run)"}[args.model]
    size = args.size or (28 if args.model == "fmnist" else 512)
    options = {"grad_checkpointing": args.grad_checkpointing, "lora_rank": args.lora_rank, "fused_adamw": args.fused,
               "grad_accumulation": args.grad_accumulation}
    result = {"s_per_it": rows[0]["s_per_it"], "peak_gb": rows[0]["peak_gb"], "method": rows[0]["method"],
              "device": describe_device(device), "model": model, "batch": args.batch * args.grad_accumulation,
              "size": size, "precision": args.precision, **options,
              "weight_dtypes": rows[0]["weight_dtypes"], "ema_halflife_kimg": rows[0]["ema_halflife_kimg"],
              "setting": setting_text(args, size, rows[0]),
              "peak_memory": "max RSS of the process" if device.type == "cpu" else "torch peak allocated",
              "resident_gb": rows[0]["resident_gb"],
              "per_method": rows}
    summary = ", ".join(describe_row(row) for row in rows)
    load = f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if device.type == "cpu" else ""
    write_result(args.result_name, result, shlex.join(["python", "benchmarks/trainer.py", *sys.argv[1:]]),
                 f"{summary} ({model}, {result['setting']}{load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
