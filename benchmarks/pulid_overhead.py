"""What does PuLID add to a sampling step, and what does embedding one face cost?

    python benchmarks/pulid_overhead.py                          # CPU: small SDXL-structured UNet, 512 px
    python benchmarks/pulid_overhead.py --model sdxl --size 512  # CPU: SDXL-size UNet (10 GB of fp32 weights)
    python benchmarks/pulid_overhead.py --device cuda            # GPU: SDXL-size UNet, 1024 px, fp16
    python benchmarks/pulid_overhead.py --dry-run DIR            # small UNet, 64 px, one step; marked result in DIR

Both samplings run in one process on one UNet with random weights (timing does not depend on the
weights), interleaved: KSampler (euler, cfg 7, so each step is a cond + uncond batch) on the plain MODEL
and on the MODEL patched by Apply PuLID (fidelity preset: ortho_v2, 8 zero tokens). The PuLID weights
are random, at the official size for the SDXL-size UNet. ``overhead_ratio`` = patched / plain time per
step. ``embed_ms``: PuLID Embed Face on one reference photo (scikit-image's astronaut) with the full-size
EVA02-CLIP-L-14-336 and v1.1 IDFormer; face detection and recognition run YuNet + SFace (antelopev2 is not
available offline; SFace's 128-d embedding is repeated to the 512-d PuLID's encoder takes).
"""

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_host  # noqa: E402
from common import (  # noqa: E402
    add_dry_run_argument,
    describe_device,
    interleaved_medians,
    set_dry_run,
    time_call,
    write_result,
)
from pack_loader import load_pack  # noqa: E402

SMALL_WIDTH = 64  # the CPU model: SDXL's blocks and 70 cross-attentions at 1/5 of the width
TINY_WIDTH = 32  # dry runs: the same structure at 1/10 of the width


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", choices=["tiny", "small", "sdxl"], default=None,
                        help="default: small on CPU, sdxl on GPU (tiny: dry runs)")
    parser.add_argument("--size", type=int, default=None, help="pixels (default 512 on CPU, 1024 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per timed run (default 2 CPU, 10 GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of each variant (default 3 CPU, 7 GPU)")
    parser.add_argument("--skip-embed", action="store_true", help="do not time Embed Face")
    add_dry_run_argument(parser)
    args = parser.parse_args()
    if args.dry_run is not None:
        set_dry_run(args.dry_run)
        args.device, args.model, args.size, args.steps, args.repeats, args.skip_embed = "cpu", "tiny", 64, 1, 1, True
    return args


def build_unet(model: str, device: str):
    """A ComfyUI SDXL MODEL with random weights: SDXL size, or SDXL's structure at a small width."""
    import comfy.supported_models
    import torch

    config = dict(comfy_host.SDXL_UNET_CONFIG)
    if model in ("small", "tiny"):
        width = SMALL_WIDTH if model == "small" else TINY_WIDTH
        config.update(model_channels=width, context_dim=width * 4, num_head_channels=16)
    patcher = comfy_host.tiny_model_patcher(comfy.supported_models.SDXL, config)
    if device == "cuda":
        patcher.model.diffusion_model.half()
        patcher.model.diffusion_model.dtype = torch.float16  # the UNet casts its inputs to this
    return patcher, config, torch.float16 if device == "cuda" else torch.float32


def build_pulid(unet_config: dict, model: str):
    """Random PuLID v1.1 weights whose projections fit the UNet's cross-attentions."""
    import torch
    from onestep.nodes.pulid_loaders import PulidModel
    from onestep.pulid.encoders import IDFormer
    from onestep.pulid.weights import SDXL_CROSS_ATTENTION_SLOTS, Layout, PuLIDSDXL

    torch.manual_seed(0)
    scale = unet_config["model_channels"] / 320
    hidden = [round(h * scale) for *_, h in SDXL_CROSS_ATTENTION_SLOTS]
    token_width = {"sdxl": 2048, "small": 256, "tiny": 32}[model]
    encoder = IDFormer() if model == "sdxl" else IDFormer(dim=64, depth=5, heads=4, output_dim=token_width) \
        if model == "small" else IDFormer(dim=16, depth=2, dim_head=8, heads=2, output_dim=token_width)
    module = PuLIDSDXL(encoder, hidden, context_dim=token_width)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.02)
    return PulidModel(Layout("pulid_sdxl", "sdxl", "IDFormer"), module.eval(), f"random PuLID v1.1 ({model})")


def random_embedding(pulid, tokens: int = 32):
    import numpy as np
    import torch
    from onestep.nodes.pulid_embed import PulidEmbedding

    width = pulid.module.projection(0).id_to_k.in_features
    generator = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, tokens, width, generator=generator) for _ in range(2))
    return PulidEmbedding(cond, uncond, "sdxl", np.zeros((1, 512), np.float32), "random")


def embed_seconds(device) -> float:
    """PuLID Embed Face on the astronaut photo, full-size EVA-CLIP and IDFormer (one warm-up, then one timed)."""
    import numpy as np
    import torch
    from face_test_assets import ASTRONAUT, SFaceAs512
    from onestep.nodes.pulid_embed import PuLIDEmbedFace
    from onestep.nodes.pulid_loaders import PulidModel
    from onestep.pulid.encoders import IDFormer
    from onestep.pulid.eva_clip import build_eva02_clip_l14_336
    from onestep.pulid.weights import Layout, PuLIDSDXL
    from PIL import Image

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    eva = build_eva02_clip_l14_336().to(device, dtype)
    pulid = PulidModel(Layout("pulid_sdxl", "sdxl", "IDFormer"), PuLIDSDXL(IDFormer(), [8] * 70).to(device, dtype),
                       "random")
    photo = torch.from_numpy(np.array(Image.open(ASTRONAUT).convert("RGB"))).float()[None] / 255
    analyzer = SFaceAs512(providers=("CUDAExecutionProvider", "CPUExecutionProvider") if device.type == "cuda"
                          else ("CPUExecutionProvider",))

    def embed():
        PuLIDEmbedFace.execute(pulid, eva, analyzer, photo, "mean", "largest", 0, "error")

    embed()
    return time_call(embed, device)


def main() -> int:
    args = parse_args()
    model_name = args.model or ("sdxl" if args.device == "cuda" else "small")
    size = args.size or (1024 if args.device == "cuda" else 512)
    steps = args.steps or (10 if args.device == "cuda" else 2)
    repeats = args.repeats or (7 if args.device == "cuda" else 3)
    comfy_host.import_comfy(cpu=args.device == "cpu")
    load_pack()
    import comfy.model_management
    import comfy.sample
    import torch
    from onestep.nodes.pulid_apply import ApplyPuLID

    device = comfy.model_management.get_torch_device()
    model, unet_config, dtype = build_unet(model_name, args.device)
    pulid = build_pulid(unet_config, model_name)
    patched = ApplyPuLID.execute(model, pulid, random_embedding(pulid), 1.0, 0.0, 1.0, "fidelity", "ortho_v2", 8)[0]
    generator = torch.Generator().manual_seed(0)
    context = unet_config["context_dim"]
    positive = [[torch.randn(1, 77, context, generator=generator), {"pooled_output": torch.zeros(1, 1280)}]]
    negative = [[torch.randn(1, 77, context, generator=generator), {"pooled_output": torch.zeros(1, 1280)}]]
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, 0)

    def sampler(m):
        return lambda: comfy.sample.sample(m, noise, steps, 7.0, "euler", "normal", positive, negative, latent,
                                           disable_pbar=True, seed=0)

    sampler(model)()  # warm-up: loading, first-call allocations
    sampler(patched)()
    medians = interleaved_medians({"plain": sampler(model), "pulid": sampler(patched)}, repeats, device)
    embed_ms = None if args.skip_embed else 1000 * embed_seconds(device)
    result = {
        "overhead_ratio": medians["pulid"] / medians["plain"],
        "plain_step_ms": 1000 * medians["plain"] / steps,
        "pulid_step_ms": 1000 * medians["pulid"] / steps,
        "embed_ms": embed_ms,
        "device": describe_device(device),
        "model": f"{'SDXL-size' if model_name == 'sdxl' else 'SDXL structure at width '}"
                 f"{'' if model_name == 'sdxl' else SMALL_WIDTH if model_name == 'small' else TINY_WIDTH} UNet, "
                 f"random weights, {str(dtype).removeprefix('torch.')}",
        "size": size, "steps": steps, "cfg": 7.0, "repeats": repeats,
        "embed_note": "YuNet + SFace detection/recognition (128-d repeated to 512-d), full-size EVA02-CLIP-L-14-336 "
                      "and IDFormer, random weights",
    }
    command = "python benchmarks/pulid_overhead.py " + shlex.join(sys.argv[1:])
    embed_text = "" if embed_ms is None else f", Embed Face {embed_ms:.0f} ms/face"
    summary = (f"PuLID per-step overhead {result['overhead_ratio']:.3f} ({result['model']}, {size} px, cfg 7: "
               f"{result['plain_step_ms']:.0f} -> {result['pulid_step_ms']:.0f} ms/step){embed_text}")
    write_result("pulid_overhead", result, command.strip(), summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
