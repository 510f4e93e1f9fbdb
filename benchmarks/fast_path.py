"""Eager vs fast path (compiled + CUDA graph) for one-step generation, in one run on one machine.

    python benchmarks/fast_path.py                       # GPU: SD1.5-size UNet + SD VAE, 512 px, batch 1 and 8, fp16
    python benchmarks/fast_path.py --smoke --device cpu  # CPU check of the code path only; writes no result

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
from common import describe_device, interleaved_medians, write_result  # noqa: E402
from pack_loader import load_pack  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny run that checks the code path; writes nothing")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.smoke:
        args.size, args.batches, args.repeats = 64, [1], 2
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
    model = comfy.sd.load_diffusion_model_state_dict(random_sd15_unet_state_dict(), model_options={"dtype": dtype})
    vae = comfy.sd.VAE(sd=random_sd_vae_state_dict())
    fast_model = OneStepFastPath.execute(model, strategy, device.type == "cuda").result[0]
    fast_decoder = FastDecoder(make_cache(strategy, compile_function=device.type == "cuda"))
    positive = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)), {}]]

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
            eager_latent = generate(model, batch)["samples"]
            eager_image = vae.decode(eager_latent)
            latent_error = float((fast_latent - eager_latent).abs().max())
            image_error = float((fast_image - eager_image).abs().max())
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
                   "max_abs_error_image": image_error,
                   **{f"{name}_ms_per_image": 1000 * seconds / batch for name, seconds in medians.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.smoke or device.type != "cuda":
        print("Smoke/CPU run: the fast path needs CUDA for graphs; no result written.")
        return 0
    first = rows[0]
    result = {
        "eager_ms": first["end_to_end_eager_ms_per_image"], "fast_ms": first["end_to_end_fast_ms_per_image"],
        "unet_ms": first["unet_fast_ms_per_image"], "vae_ms": first["vae_fast_ms_per_image"],
        "compile_s": first["compile_s"], "batch": first["batch"], "device": describe_device(device),
        "model": "SD1.5-size UNet + SD VAE (random weights), fp16", "image_size": args.size, "per_batch": rows,
    }
    command = shlex.join(["python", "benchmarks/fast_path.py", *sys.argv[1:]])
    write_result("fast_path", result, command,
                 f"fast_ms {result['fast_ms']:.1f} vs eager_ms {result['eager_ms']:.1f} ({args.size} px, batch 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
