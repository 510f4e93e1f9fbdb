"""What does sampling a one-step student through ComfyUI cost, next to calling the network directly and
next to the teacher's 25-step, cfg-7.5 sampling of the same network?

    python benchmarks/sampler_overhead.py --quick          # CPU, SD1.5-size UNet, 128 px, batch 1
    python benchmarks/sampler_overhead.py --device cuda     # GPU: SD1.5-size UNet, 512 px, batch 1 and 8, fp16
    python benchmarks/sampler_overhead.py --dry-run DIR     # tiny UNet on the CPU; marked result in DIR only

All three are timed in one run on one SD1.5-size UNet with random weights (timing does not depend on the
weights): `OneStep Generate` as ComfyUI executes it, the bare `apply_model` call it wraps (same input scaling,
same sigma, same conditioning), and ComfyUI's KSampler with euler / normal / 25 steps / cfg 7.5.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_host  # noqa: E402
from common import add_dry_run_argument, describe_device, interleaved_medians, set_dry_run, write_result  # noqa: E402
from pack_loader import load_pack  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized run: 128 px, batch 1, few repeats")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default 128 quick, 512 full)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 quick, 1 8 full)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of the one-step paths")
    add_dry_run_argument(parser)
    return parser.parse_args()


def build_sd15_unet(device: str, tiny: bool = False):
    """A ComfyUI MODEL: a random SD1.5-size UNet, detected by ComfyUI from its weights (``tiny``: the tests'
    SD1.5-structured UNet at width 32, for dry runs)."""
    import comfy.sd
    import torch
    from random_models import random_sd15_unet_state_dict

    if tiny:
        import comfy.supported_models

        return comfy_host.tiny_model_patcher(comfy.supported_models.SD15)

    dtype = torch.float16 if device == "cuda" else torch.float32
    return comfy.sd.load_diffusion_model_state_dict(random_sd15_unet_state_dict(), model_options={"dtype": dtype})


def main() -> int:
    args = parse_args()
    if args.dry_run is not None:
        set_dry_run(args.dry_run)
        args.device, args.size, args.batches, args.repeats, args.quick = "cpu", 32, [1], 2, True
    quick = args.quick
    size = args.size or (128 if quick else 512)
    batches = args.batches or ([1] if quick else [1, 8])
    repeats = args.repeats or (9 if quick else 20)
    teacher_repeats = 1 if args.dry_run is not None else 3 if quick else 5
    comfy_host.import_comfy(cpu=args.device == "cpu")
    load_pack()
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    import torch
    from onestep.nodes.sampling import OneStepGenerate

    device = comfy.model_management.get_torch_device()
    model = build_sd15_unet(args.device, tiny=args.dry_run is not None)
    context_dim = model.model.model_config.unet_config["context_dim"]
    rows = []
    for batch in batches:
        generator = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, context_dim, generator=generator), {}]]
        negative = [[torch.randn(1, 77, context_dim, generator=generator), {}]]
        latent = torch.zeros(batch, 4, size // 8, size // 8)

        def one_step():
            OneStepGenerate.execute(model, positive, 0, batch, size, size, "sid-lsg", 1, 2.5)

        comfy.model_management.load_models_gpu([model])
        sigma = torch.full([batch], 2.5017, device=device)
        x = torch.randn(latent.shape, generator=generator).to(device) * 2.5017
        context = positive[0][0].repeat(batch, 1, 1).to(device)

        def bare_call():
            model.model.apply_model(x, sigma, c_crossattn=context)

        def teacher_25_steps():
            noise = comfy.sample.prepare_noise(latent, 0)
            comfy.sample.sample(model, noise, 25, 7.5, "euler", "normal", positive, negative, latent,
                                disable_pbar=True, seed=0)

        with torch.inference_mode():
            for warm_up in (one_step, bare_call):
                warm_up()
            overhead = interleaved_medians({"one_step": one_step, "bare_call": bare_call}, repeats, device)
            speedup = interleaved_medians({"one_step": one_step, "teacher": teacher_25_steps}, teacher_repeats, device)
        rows.append({
            "batch": batch,
            "one_step_ms": 1000 * overhead["one_step"],
            "bare_call_ms": 1000 * overhead["bare_call"],
            "teacher_25step_cfg_ms": 1000 * speedup["teacher"],
            "overhead_ratio": overhead["one_step"] / overhead["bare_call"],
            "speedup_vs_25step_cfg": speedup["teacher"] / speedup["one_step"],
        })
        print(json.dumps(rows[-1]), flush=True)

    first = rows[0]
    result = {
        "overhead_ratio": first["overhead_ratio"],
        "speedup_vs_25step_cfg": first["speedup_vs_25step_cfg"],
        "device": describe_device(device),
        "model": "tiny SD1.5-structured UNet (dry run)" if args.dry_run is not None else
                 "SD1.5-size UNet (random weights)",
        "dtype": str(next(model.model.parameters()).dtype),
        "batch": first["batch"],
        "image_size": size,
        "repeats": repeats,
        "teacher_repeats": teacher_repeats,
        "per_batch": rows,
    }
    command = shlex.join(["python", "benchmarks/sampler_overhead.py", *sys.argv[1:]])
    summary = (f"overhead_ratio {first['overhead_ratio']:.3f}, speedup_vs_25step_cfg "
               f"{first['speedup_vs_25step_cfg']:.1f}x ({result['model']}, {result['dtype']}, {size} px, batch "
               f"{first['batch']})")
    write_result("sampler_overhead", result, command, summary)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
