"""Apply PuLID on an SDXL-size UNet (fp16, 1024 px) sampled on CUDA: the 70 cross-attentions are patched on a clone,
the identity changes the image, and the unpatched model still gives its own image afterwards."""

import sys
from pathlib import Path

import comfy.sample
import torch
from gpu_helpers import relative_error
from onestep.nodes.pulid_apply import ApplyPuLID

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pulid_overhead  # noqa: E402  (its random SDXL-size UNet, PuLID v1.1 weights and embedding builders)

SDXL_CROSS_ATTENTIONS = 70


def test_apply_pulid_on_an_sdxl_size_model(scale):
    model_name = "tiny" if scale.dry else "sdxl"
    model, unet_config, dtype = pulid_overhead.build_unet(model_name, scale.device.type)
    assert dtype == (torch.float32 if scale.dry else torch.float16)
    pulid = pulid_overhead.build_pulid(unet_config, model_name)
    patched = ApplyPuLID.execute(model, pulid, pulid_overhead.random_embedding(pulid), 1.0, 0.0, 1.0, "fidelity",
                                 "ortho_v2", 8)[0]
    replaced = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replaced) == SDXL_CROSS_ATTENTIONS
    assert "patches_replace" not in model.model_options.get("transformer_options", {}), "the input MODEL is untouched"

    generator = torch.Generator().manual_seed(0)
    context = unet_config["context_dim"]
    conditions = [[[torch.randn(1, 77, context, generator=generator), {"pooled_output": torch.zeros(1, 1280)}]]
                  for _ in range(2)]
    latent = torch.zeros(1, 4, scale.sdxl_size // 8, scale.sdxl_size // 8)
    noise = comfy.sample.prepare_noise(latent, 0)

    def sample(m) -> torch.Tensor:
        return comfy.sample.sample(m, noise, 1 if scale.dry else 2, 7.0, "euler", "normal", *conditions, latent,
                                   disable_pbar=True, seed=0)

    plain = sample(model)
    with_identity = sample(patched)
    plain_again = sample(model)
    for name, image in (("plain", plain), ("PuLID", with_identity)):
        assert image.shape == latent.shape and torch.isfinite(image).all(), name
    # random weights at 0.02 move the sample by ~1e-4 relative; the unpatched model repeats itself to 1e-6
    assert relative_error(with_identity, plain) > 2e-5, "the identity must change the sample"
    assert relative_error(plain_again, plain) <= (0.0 if scale.dry else 1e-6), \
        "the unpatched model must give its own sample after PuLID ran"
    if not scale.dry:
        assert next(model.model.diffusion_model.parameters()).device.type == "cuda", "sampled on the GPU"
