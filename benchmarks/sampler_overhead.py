"""What does sampling a one-step student through ComfyUI cost, next to calling the network directly and
next to the teacher's 25-step, cfg-7.5 sampling of the same network?

    python benchmarks/sampler_overhead.py --quick          # CPU, SD1.5-size UNet, 128 px, batch 1
    python benchmarks/sampler_overhead.py --device cuda     # GPU: SD1.5-size UNet, 512 px, batch 1 and 8, fp16
    python benchmarks/sampler_overhead.py --dry-run DIR     # tiny UNet on the CPU; marked result in DIR only
    python benchmarks/sampler_overhead.py --quick --preset dmd2-sdxl-1step sdxl-turbo ...   # one row per preset

All three are timed in one run on one SD1.5-size UNet with random weights (timing does not depend on the
weights): `OneStep Generate` as ComfyUI executes it, the bare `apply_model` call it wraps (same input scaling,
same sigma, same conditioning), and ComfyUI's KSampler with euler / normal / 25 steps / cfg 7.5.
"""

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_host  # noqa: E402
from common import (  # noqa: E402
    add_dry_run_argument,
    describe_device,
    interleaved_medians,
    interleaved_samples,
    set_dry_run,
    time_call,
    write_result,
)
from pack_loader import load_pack  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized run: 128 px, batch 1, few repeats")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default 128 quick, 512 full)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 quick, 1 8 full)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of the one-step paths")
    parser.add_argument("--preset", nargs="+", default=None, metavar="NAME",
                        help="instead of the SiD-LSG run: OneStep Generate with each few-step preset (or 'all') at its "
                             "smallest step count, against as many bare network calls, on a network of its family; "
                             "one result row per preset")
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


def build_family_model(family: str, device: str, tiny: bool):
    """A random network of a preset's family: SD1.5-size; SD2.1-base-size (SD1.5's layout with 1024-d text, linear
    projections and 64-d heads); SDXL's block structure at one width (tools/random_models.py), since SDXL's 2.6B
    parameters in float32 do not fit beside other jobs on this CPU. ``tiny``: the tests' small models."""
    import comfy.sd
    import comfy.supported_models
    import torch
    from random_models import SD15_UNET_CONFIG, SDXL_STRUCTURE_UNET_CONFIG, random_unet_state_dict

    if family == "sd15":
        return build_sd15_unet(device, tiny)
    if tiny:
        config_class = comfy.supported_models.SD20 if family == "sd2" else comfy.supported_models.SDXL
        config = {**comfy_host.TINY_UNET_CONFIG, "model_channels": 64} if family == "sd2" else \
            comfy_host.TINY_SDXL_UNET_CONFIG
        return comfy_host.tiny_model_patcher(config_class, config)
    config = {**SD15_UNET_CONFIG, "context_dim": 1024, "use_linear_in_transformer": True, "num_heads": -1,
              "num_head_channels": 64} if family == "sd2" else SDXL_STRUCTURE_UNET_CONFIG
    dtype = torch.float16 if device == "cuda" else torch.float32
    return comfy.sd.load_diffusion_model_state_dict(random_unet_state_dict(config, seed=0),
                                                    model_options={"dtype": dtype})


FAMILY_MODEL_NAMES = {"sd15": "SD1.5-size UNet", "sd2": "SD2.1-base-size UNet",
                      "sdxl": "SDXL-structured UNet at width 320 (0.28B)"}
TINY_MODEL_NAMES = {"sd15": "tiny SD1.5-structured UNet", "sd2": "tiny SD2-structured UNet",
                    "sdxl": "tiny SDXL-structured UNet"}


def preset_rows(args, size: int, repeats: int):
    """Yields (preset, result) for each few-step preset, as each is measured: OneStep Generate at the preset's
    smallest step count k against k bare apply_model calls at the preset's noise levels (same input scaling,
    conditioning and size embedding)."""
    import comfy.model_management
    import torch
    from onestep.nodes.presets import FEW_STEP_PRESETS, preset_sigmas
    from onestep.nodes.sampling import OneStepGenerate

    names = list(FEW_STEP_PRESETS) if args.preset == ["all"] else args.preset
    device = comfy.model_management.get_torch_device()
    models = {}
    for name in names:
        preset = FEW_STEP_PRESETS[name]
        family = preset.families[-1]  # SDXL where a preset serves several families
        if family not in models:
            models[family] = build_family_model(family, args.device, tiny=args.dry_run is not None)
        model, steps = models[family], min(preset.steps)
        unet_config = model.model.model_config.unet_config
        generator = torch.Generator().manual_seed(0)
        context = torch.randn(1, 77, unet_config["context_dim"], generator=generator)
        adm = unet_config.get("adm_in_channels")
        # SDXL's size embedding is 6 x 256 of the adm input; the rest is the pooled text embedding
        pooled = {"pooled_output": torch.zeros(1, adm - 6 * 256)} if family == "sdxl" else {}
        positive = [[context, pooled]]
        sigmas = preset_sigmas("benchmark", model, name, steps)
        x = (torch.randn(1, 4, size // 8, size // 8, generator=generator) * float(sigmas[0])).to(device)
        y = torch.randn(1, adm, generator=generator).to(device) if adm else None
        extra = {"y": y} if y is not None else {}

        def one_step():
            OneStepGenerate.execute(model, positive, 0, 1, size, size, name, steps, 0.0)

        def bare_calls():
            for sigma in sigmas[:-1]:
                model.model.apply_model(x, sigma.view(1).to(device), c_crossattn=context.to(device), **extra)

        comfy.model_management.load_models_gpu([model])
        with torch.inference_mode():
            one_step(), bare_calls()
            samples = interleaved_samples({"one_step": one_step, "bare_call": bare_calls}, repeats, device)
            outside = time_outside_network(model, one_step, device)
        times = {key: statistics.median(values) for key, values in samples.items()}
        fastest = {key: min(values) for key, values in samples.items()}
        row = {"preset": name, "family": family, "steps": steps, "one_step_ms": 1000 * times["one_step"],
               "bare_calls_ms": 1000 * times["bare_call"], "overhead_ratio": times["one_step"] / times["bare_call"],
               # the fastest of many calls: the CPU's noise only ever adds time, so minima compare the work itself
               "overhead_ratio_of_fastest": fastest["one_step"] / fastest["bare_call"],
               "outside_network_ms": 1000 * outside,
               "outside_network_ratio": 1 + outside / times["bare_call"],
               "device": describe_device(device),
               "model": (TINY_MODEL_NAMES[family] + " (dry run)") if args.dry_run is not None else
               FAMILY_MODEL_NAMES[family] + " (random weights)",
               "dtype": str(next(model.model.parameters()).dtype), "batch": 1, "image_size": size, "repeats": repeats}
        print(json.dumps(row), flush=True)
        yield name, row


def time_outside_network(model, generate, device, repeats: int = 3) -> float:
    """Median seconds one OneStep Generate spends outside the network's apply_model calls: the node's own cost,
    measured inside one call, so it holds on a CPU other jobs share (where whole-call medians swing by 10 %)."""
    import time

    base_model, inside = model.model, [0.0]
    original = base_model.apply_model

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - started

    base_model.apply_model = timed  # this benchmark's own model, restored below
    try:
        samples = []
        for _ in range(repeats):
            inside[0] = 0.0
            samples.append(time_call(generate, device) - inside[0])
    finally:
        del base_model.apply_model
    return sorted(samples)[len(samples) // 2]


def run_presets(args) -> int:
    size = args.size or (128 if args.quick else 512)
    repeats = args.repeats or (9 if args.quick else 20)
    command = shlex.join(["python", "benchmarks/sampler_overhead.py", *sys.argv[1:]])
    for name, row in preset_rows(args, size, repeats):
        summary = (f"{name}: overhead_ratio {row['overhead_ratio']:.3f} (OneStep Generate, {row['steps']} step(s) = "
                   f"{row['one_step_ms']:.0f} ms vs {row['steps']} bare call(s) = {row['bare_calls_ms']:.0f} ms; "
                   f"fastest of {repeats} each: ratio {row['overhead_ratio_of_fastest']:.3f}), "
                   f"time outside the network {row['outside_network_ms']:.1f} ms per Generate "
                   f"(ratio {row['outside_network_ratio']:.4f}); {row['model']}, {row['dtype']}, {size} px, batch 1")
        write_result(f"sampler_overhead_{name}", row, command, summary)
    return 0


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
    if args.preset:
        return run_presets(args)
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
