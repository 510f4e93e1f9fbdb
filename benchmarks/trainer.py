"""Seconds per distillation iteration and peak memory, per method, in one run.

    python benchmarks/trainer.py                          # CPU: the pack's Fashion-MNIST-size EDM network, batch 8
    python benchmarks/trainer.py --model sd15 --device cuda --batch 8 --size 512 --precision bf16   # GPU, SD1.5
    python benchmarks/trainer.py --grad-checkpointing --lora-rank 8 --fused --grad-accumulation 2  # memory options
    python benchmarks/trainer.py --model sd15 --size 64 --batch 1 --lora-rank 4 --methods sid   # SD1.5 LoRA, CPU

Each method runs in its own process (so peak memory is its own): a few warm-up iterations, then timed ones.
CPU peak memory is the process's maximum resident set; GPU peak memory is torch's peak allocation.
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

from common import describe_device, write_result  # noqa: E402
from pack_loader import load_pack  # noqa: E402

METHODS = ("sid", "sid-lsg", "sim")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist", choices=["fmnist", "sd15"])
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
    return parser.parse_args(argv)


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
    from onestep.nodes.distill_trainer import ComfyDenoiser, trainable_copy
    from random_models import random_sd15_unet_state_dict

    patcher = comfy.sd.load_diffusion_model_state_dict(random_sd15_unet_state_dict())
    teacher = trainable_copy(ComfyDenoiser(patcher.model, "c_crossattn")).to(args.device).requires_grad_(False)
    prompts = torch.randn(16, 77, 768, device=args.device)
    size = (args.size or 512) // 8
    sigma_625 = float(patcher.get_model_object("model_sampling").sigma(torch.tensor(625.0)))
    return teacher, lambda n, g: prompts[torch.randint(16, (n,), generator=g, device=g.device)], \
        torch.zeros(1, 77, 768, device=args.device), (4, size, size), sigma_625, "ddpm"


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
    return {"method": args.method, "s_per_it": seconds, "peak_gb": peak_gb,
            "resident_gb": resident_gb() if device.type == "cpu" else None}


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


def main() -> int:
    args = parse_args()
    if args.method:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    for method in args.methods:
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--method", method],
                               capture_output=True, text=True, check=True)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    import torch

    device = torch.device(args.device)
    model = "Fashion-MNIST EDM UNet (random weights)" if args.model == "fmnist" else "SD1.5-size UNet (random weights)"
    options = {"grad_checkpointing": args.grad_checkpointing, "lora_rank": args.lora_rank, "fused_adamw": args.fused,
               "grad_accumulation": args.grad_accumulation}
    result = {"s_per_it": rows[0]["s_per_it"], "peak_gb": rows[0]["peak_gb"], "method": rows[0]["method"],
              "device": describe_device(device), "model": model, "batch": args.batch * args.grad_accumulation,
              "precision": args.precision, **options,
              "peak_memory": "max RSS of the process" if device.type == "cpu" else "torch peak allocated",
              "resident_gb": rows[0]["resident_gb"],
              "per_method": rows}
    summary = ", ".join(describe_row(row) for row in rows)
    chosen = ", ".join(f"{k} {v}" for k, v in options.items() if v not in (False, 0, 1))
    load = f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if device.type == "cpu" else ""
    write_result("trainer", result, shlex.join(["python", "benchmarks/trainer.py", *sys.argv[1:]]),
                 f"{summary} ({model}, batch {result['batch']}, {args.precision}{', ' + chosen if chosen else ''}"
                 f"{load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
