"""Eager vs fast path (compiled + CUDA graph) for one-step generation, in one run on one machine.

    python benchmarks/fast_path.py                       # GPU: SD1.5-size UNet + SD VAE, 512 px, batch 1 and 8, fp16
    python benchmarks/fast_path.py --smoke --device cpu  # CPU check of the code path only; writes no result
    python benchmarks/fast_path.py --batches 1 --compile off --result-name fast_path_graph_only  # CUDA graphs alone
    python benchmarks/fast_path.py --dry-run DIR         # tiny UNet on the CPU, static-eager; marked result in DIR

Times per image: the UNet call alone, the VAE decode alone, and OneStep Generate + decode end to end,
eager and through OneStep Fast Path / OneStep Fast VAE Decode; plus the first (compile + capture) call.
Checks the fast outputs against the eager ones before timing. Random weights: timing does not depend on them.
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_host  # noqa: E402
from common import (  # noqa: E402
    add_dry_run_argument,
    describe_device,
    interleaved_medians,
    relative_error,
    set_dry_run,
    write_result,
)

MATCH_TOLERANCE = 1e-2
"""Largest relative error (||fast - eager|| / ||eager||) of the fast outputs that counts as equal: fp16 compiled
kernels reorder sums, so the outputs are close, not identical."""
from pack_loader import load_pack  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny run that checks the code path; writes nothing")
    parser.add_argument("--compile", choices=["on", "off"], default="on",
                        help="the Fast Path nodes' compile switch (off: CUDA graphs of the eager kernels)")
    parser.add_argument("--result-name", default="fast_path", help="results/<name>.json")
    add_dry_run_argument(parser)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.smoke:
        args.size, args.batches, args.repeats = 64, [1], 2
    if args.dry_run is not None:  # the tiny SD1.5-structured UNet of the tests, on the CPU
        args.device, args.size, args.batches, args.repeats = "cpu", 32, [1], 2
        set_dry_run(args.dry_run)
    comfy_host.import_comfy(cpu=args.device == "cpu")
    load_pack()
    import comfy.model_management
    import comfy.sd
    import torch
    from onestep.nodes.fast_path import FastDecoder, OneStepFastPath, make_cache
    from onestep.nodes.sampling import OneStepGenerate
    from random_models import random_sd15_unet_state_dict, random_sd_vae_state_dict

    device = comfy.model_management.get_torch_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    strategy = "auto" if device.type == "cuda" else "static-eager"
    compile_function = device.type == "cuda" and args.compile == "on"
    if args.dry_run is not None:
        import comfy.supported_models

        model, context_dim = comfy_host.tiny_model_patcher(comfy.supported_models.SD15), 32
    else:
        model = comfy.sd.load_diffusion_model_state_dict(random_sd15_unet_state_dict(),
                                                         model_options={"dtype": dtype})
        context_dim = 768
    vae = comfy.sd.VAE(sd=random_sd_vae_state_dict())
    fast_model = OneStepFastPath.execute(model, strategy, compile_function).result[0]
    fast_decoder = FastDecoder(make_cache(strategy, compile_function=compile_function))
    positive = [[torch.randn(1, 77, context_dim, generator=torch.Generator().manual_seed(0)), {}]]

    def generate(m, batch):
        return OneStepGenerate.execute(m, positive, 0, batch, args.size, args.size, "sid-lsg", 1, 0.0).result[0]

    rows = []
    with torch.inference_mode():
        for batch in args.batches:
            started = time.perf_counter()
            fast_latent = generate(fast_model, batch)["samples"]
            fast_image = fast_decoder.decode(vae, fast_latent)
            comfy.model_management.soft_empty_cache()
            compile_s = time.perf_counter() - started
            print(f"batch {batch}: first call (compile {'on' if compile_function else 'off'} + capture) "
                  f"{compile_s:.1f} s", flush=True)
            eager_latent = generate(model, batch)["samples"]
            eager_image = vae.decode(eager_latent)
            latent_error = float((fast_latent - eager_latent).abs().max())
            image_error = float((fast_image - eager_image).abs().max())
            relative = {"latent": relative_error(fast_latent, eager_latent),
                        "image": relative_error(fast_image, eager_image)}
            latent = eager_latent.to(device=vae.device, dtype=vae.vae_dtype)
            medians = interleaved_medians({
                "unet_eager": lambda: generate(model, batch),
                "unet_fast": lambda: generate(fast_model, batch),
                "vae_eager": lambda: vae.decode(latent),
                "vae_fast": lambda: fast_decoder.decode(vae, latent),
                "end_to_end_eager": lambda: vae.decode(generate(model, batch)["samples"]),
                "end_to_end_fast": lambda: fast_decoder.decode(vae, generate(fast_model, batch)["samples"]),
            }, args.repeats, device)
            row = {"batch": batch, "compile_s": compile_s, "max_abs_error_latent": latent_error,
                   "max_abs_error_image": image_error, "relative_error_latent": relative["latent"],
                   "relative_error_image": relative["image"],
                   "matches_eager": all(error <= MATCH_TOLERANCE for error in relative.values()),
                   **{f"{name}_ms_per_image": 1000 * seconds / batch for name, seconds in medians.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.smoke or (device.type != "cuda" and args.dry_run is None):
        print("Smoke/CPU run: the fast path needs CUDA for graphs; no result written.")
        return 0
    first = rows[0]
    model_name = ("tiny SD1.5-structured UNet (dry run)" if args.dry_run is not None else "SD1.5-size UNet") + \
        f" + SD VAE (random weights), {str(dtype).removeprefix('torch.')}"
    result = {
        "eager_ms": first["end_to_end_eager_ms_per_image"], "fast_ms": first["end_to_end_fast_ms_per_image"],
        "unet_ms": first["unet_fast_ms_per_image"], "vae_ms": first["vae_fast_ms_per_image"],
        "unet_eager_ms": first["unet_eager_ms_per_image"], "vae_eager_ms": first["vae_eager_ms_per_image"],
        "compile_s": first["compile_s"], "batch": first["batch"], "device": describe_device(device),
        "compile": compile_function, "strategy": strategy, "matches_eager": all(r["matches_eager"] for r in rows),
        "match_tolerance": MATCH_TOLERANCE,
        "model": model_name, "image_size": args.size, "per_batch": rows,
    }
    command = shlex.join(["python", "benchmarks/fast_path.py", *sys.argv[1:]])
    write_result(args.result_name, result, command,
                 f"fast_ms {result['fast_ms']:.1f} vs eager_ms {result['eager_ms']:.1f} ({args.size} px, batch "
                 f"{first['batch']}, compile {'on' if compile_function else 'off'}, {strategy}; UNet "
                 f"{result['unet_ms']:.1f} ms, VAE {result['vae_ms']:.1f} ms, first call {result['compile_s']:.0f} s; "
                 f"outputs {'match' if result['matches_eager'] else 'DO NOT match'} eager)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
