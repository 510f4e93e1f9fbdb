"""OneStep Fast Path and Fast VAE Decode on CUDA: captured CUDA graphs replay what eager computes, a weight or shape
change captures anew, and a call that cannot be captured runs eager (and leaves CUDA usable).

Graphs of the eager kernels (compile off): torch.compile's first call takes minutes at SD1.5 size, and
benchmarks/fast_path.py (run by tools/gpu_check.py) checks the compiled path against eager at full size.
"""

import comfy.model_management
import comfy.sd
import pytest
import torch
from gpu_helpers import assert_equal_outputs
from onestep.nodes.fast_path import FastDecoder, OneStepFastPath, make_cache
from onestep.nodes.sampling import OneStepGenerate

FIRST_INPUT_CONV = "diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(autouse=True)
def inference_mode():
    """ComfyUI runs every node under inference mode: capture and replay under it too."""
    with torch.inference_mode():
        yield


def conditioning(context_dim: int, seed: int = 0):
    return [[torch.randn(1, 77, context_dim, generator=torch.Generator().manual_seed(seed)), {}]]


def generate(model, context_dim: int, size: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return OneStepGenerate.execute(model, conditioning(context_dim, seed), seed, batch, size, size, "sid-lsg", 1,
                                   0.0).result[0]["samples"]


def fast(model, scale):
    patched = OneStepFastPath.execute(model, scale.strategy, False).result[0]
    return patched, patched.model_options["model_function_wrapper"].cache


def assert_graphs(cache, scale) -> None:
    """On CUDA every cached entry holds a real CUDA graph (not the eager buffer protocol)."""
    assert cache.entries, "nothing was captured"
    if not scale.dry:
        assert all(entry.graph is not None for entry in cache.entries.values()), "an entry has no CUDA graph"


def test_unet_capture_and_replay_equal_eager(sd15_unet, context_dim, scale):
    fast_model, cache = fast(sd15_unet, scale)
    outputs = []
    for seed in range(3):
        replayed = generate(fast_model, context_dim, scale.image_size, seed)
        assert_equal_outputs(replayed, generate(sd15_unet, context_dim, scale.image_size, seed), scale.dry,
                             f"UNet seed {seed}")
        outputs.append(replayed)
    assert not torch.equal(outputs[0], outputs[1]), "another seed and prompt must give another latent (stale replay)"
    assert cache.stats.captures == 1 and cache.stats.replays == 3 and cache.stats.eager_calls == 0, cache.stats
    assert_graphs(cache, scale)


def test_a_weight_patch_and_a_new_shape_capture_anew(sd15_unet, context_dim, scale):
    fast_model, cache = fast(sd15_unet, scale)
    size = scale.image_size
    plain = generate(fast_model, context_dim, size)
    weight = sd15_unet.model.state_dict()[FIRST_INPUT_CONV]
    difference = 0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(7)).to(weight.dtype)
    patched_fast, patched_eager = fast_model.clone(), sd15_unet.clone()
    for model in (patched_fast, patched_eager):  # a weight patch as a LoRA adds one ("diff" patch)
        assert model.add_patches({FIRST_INPUT_CONV: (difference,)}) == [FIRST_INPUT_CONV]
    patched = generate(patched_fast, context_dim, size)
    assert cache.stats.captures == 2, "the patched weights must be captured anew"
    assert_equal_outputs(patched, generate(patched_eager, context_dim, size), scale.dry, "patched UNet")
    assert not torch.allclose(patched, plain), "the weight patch must change the output"
    assert_equal_outputs(generate(fast_model, context_dim, size), generate(sd15_unet, context_dim, size), scale.dry,
                         "UNet after the patch was removed")

    captures = cache.stats.captures
    bigger = generate(fast_model, context_dim, size + 64, batch=2)
    assert cache.stats.captures == captures + 1, "a new latent shape must be captured anew"
    assert bigger.shape[0] == 2 and bigger.shape[-1] == (size + 64) // 8
    assert_equal_outputs(bigger, generate(sd15_unet, context_dim, size + 64, batch=2), scale.dry, "UNet, new shape")
    assert cache.stats.eager_calls == 0
    assert_graphs(cache, scale)


@pytest.fixture(scope="module")
def vae():
    from random_models import random_sd_vae_state_dict

    return comfy.sd.VAE(sd=random_sd_vae_state_dict())


def test_vae_decode_capture_and_replay_equal_eager(vae, scale):
    decoder = FastDecoder(make_cache(scale.strategy, compile_function=False))
    latent_size = scale.image_size // 8
    for seed, batch in ((0, 1), (1, 1), (2, 2)):
        latent = torch.randn(batch, 4, latent_size, latent_size, generator=torch.Generator().manual_seed(seed))
        image = decoder.decode(vae, latent)
        assert image.shape == (batch, scale.image_size, scale.image_size, 3)
        assert_equal_outputs(image, vae.decode(latent), scale.dry, f"VAE decode seed {seed} batch {batch}")
    assert decoder.cache.stats.captures == 2, "batch 1 once, batch 2 once"
    assert decoder.cache.stats.replays == 3 and decoder.cache.stats.eager_calls == 0
    assert_graphs(decoder.cache, scale)


def host_sync_patch(q, k, v, extra_options):
    """An attention replacement that reads a value back to the host: a CUDA graph cannot capture that."""
    scale = 1.0 + 0.0 * q.abs().max().item()
    heads, dim_head = extra_options["n_heads"], extra_options["dim_head"]
    split = [t.view(t.shape[0], -1, heads, dim_head).transpose(1, 2) for t in (q, k, v)]
    return scale * torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(q.shape)


def test_an_uncapturable_call_runs_eager_and_cuda_stays_usable(sd15_unet, context_dim, scale, caplog):
    """On CUDA the capture itself fails (a host read-back inside the graph) and the node runs eager with the reason;
    on the CPU dry run 'auto' runs eager because there is no CUDA. Either way the output is the eager one."""
    fast_model = OneStepFastPath.execute(sd15_unet, "auto", False).result[0]
    cache = fast_model.model_options["model_function_wrapper"].cache
    syncing_fast, syncing_eager = fast_model.clone(), sd15_unet.clone()
    for model in (syncing_fast, syncing_eager):
        model.set_model_attn2_replace(host_sync_patch, "input", 1)
    with caplog.at_level("WARNING", logger="onestep.fastpath"):
        for seed in range(2):
            assert_equal_outputs(generate(syncing_fast, context_dim, scale.image_size, seed),
                                 generate(syncing_eager, context_dim, scale.image_size, seed), scale.dry,
                                 f"eager fallback seed {seed}")
    messages = [record.getMessage() for record in caplog.records if "running eager" in record.getMessage()]
    assert len(messages) == 1, messages  # said once, not per call
    assert cache.stats.eager_calls == 2
    if scale.dry:
        assert "CUDA graphs need a CUDA device" in messages[0]
        return
    assert "capture failed" in messages[0] and len(cache.failed) == 1, messages
    assert torch.cuda.current_stream() == torch.cuda.default_stream(), "a failed capture left its stream current"
    # the same cache still captures and replays a capturable call, equal to eager
    assert_equal_outputs(generate(fast_model, context_dim, scale.image_size), generate(sd15_unet, context_dim,
                         scale.image_size), scale.dry, "UNet captured after a failed capture")
    assert cache.stats.captures == 1
    comfy.model_management.soft_empty_cache()
