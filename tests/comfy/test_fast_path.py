"""OneStep Fast Path on the CPU: never stale (prompt, seed, patches, size, model), loud fallback, bounded memory."""

import comfy.model_management
import psutil
import pytest
import torch
from onestep.nodes.fast_path import OneStepFastPath
from onestep.nodes.sampling import OneStepGenerate

TEXT_TOKENS, CONTEXT_DIM = 7, 32


def conditioning(seed: int):
    return [[torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed)), {}]]


def generate(model, prompt_seed=0, seed=0, size=64, steps=1, batch=1):
    return OneStepGenerate.execute(model, conditioning(prompt_seed), seed, batch, size, size, "sid-lsg", steps,
                                   0.0).result[0]["samples"]


def fast(model, strategy="static-eager"):
    patched = OneStepFastPath.execute(model, strategy, False).result[0]
    return patched, patched.model_options["model_function_wrapper"].cache


def scale_attention_output(factor):
    def patch(q, k, v, extra_options):
        return factor * torch.nn.functional.scaled_dot_product_attention(
            *(t.view(t.shape[0], -1, extra_options["n_heads"], extra_options["dim_head"]).transpose(1, 2)
              for t in (q, k, v))
        ).transpose(1, 2).reshape(q.shape)
    return patch


def test_fast_path_follows_prompt_seed_patches_size_and_steps(tiny_sd15):
    fast_model, cache = fast(tiny_sd15)
    checks = [
        dict(), dict(prompt_seed=1), dict(seed=5), dict(size=48), dict(steps=2), dict(batch=2), dict(),
    ]
    for overrides in checks:
        torch.testing.assert_close(generate(fast_model, **overrides), generate(tiny_sd15, **overrides))

    patched_eager = tiny_sd15.clone()
    patched_eager.set_model_attn2_replace(scale_attention_output(3.0), "input", 1)
    patched_fast = fast_model.clone()
    patched_fast.set_model_attn2_replace(scale_attention_output(3.0), "input", 1)
    torch.testing.assert_close(generate(patched_fast), generate(patched_eager))
    assert not torch.allclose(generate(patched_fast), generate(tiny_sd15)), "the patch must change the output"
    torch.testing.assert_close(generate(fast_model), generate(tiny_sd15)), "removing the patch restores the output"
    assert cache.stats.captures >= 2 and cache.stats.eager_calls == 0


def test_same_shape_prompts_reuse_one_capture(tiny_sd15):
    fast_model, cache = fast(tiny_sd15)
    for prompt_seed in range(4):
        generate(fast_model, prompt_seed=prompt_seed, seed=prompt_seed)
    assert cache.stats.captures == 1
    assert cache.stats.replays == 4


def test_a_second_model_under_the_same_wrapper_is_not_served_from_the_first(tiny_sd15, comfy_host):
    import comfy.supported_models

    other = comfy_host.tiny_model_patcher(comfy.supported_models.SD15, seed=1)
    fast_model, _ = fast(tiny_sd15)
    swapped = other.clone()
    swapped.set_model_unet_function_wrapper(fast_model.model_options["model_function_wrapper"])
    torch.testing.assert_close(generate(fast_model), generate(tiny_sd15))
    torch.testing.assert_close(generate(swapped), generate(other))


def test_auto_on_the_cpu_runs_eager_and_says_so_once(tiny_sd15, caplog):
    fast_model, cache = fast(tiny_sd15, strategy="auto")
    with caplog.at_level("WARNING", logger="onestep.fastpath"):
        for seed in range(3):
            torch.testing.assert_close(generate(fast_model, seed=seed), generate(tiny_sd15, seed=seed))
    messages = [r.getMessage() for r in caplog.records if "running eager" in r.getMessage()]
    assert messages == ["OneStep fast path: running eager because CUDA graphs need a CUDA device and this "
                        "model runs on cpu."]
    assert cache.stats.eager_calls == 3 and not cache.entries


def test_an_interrupt_during_capture_propagates_and_caches_nothing(tiny_sd15):
    fast_model, cache = fast(tiny_sd15)
    interrupting = fast_model.clone()
    calls = []

    def interrupt_first_call(q, k, v, extra_options):
        calls.append(1)
        if len(calls) == 1:
            raise comfy.model_management.InterruptProcessingException()
        return scale_attention_output(1.0)(q, k, v, extra_options)

    interrupting.set_model_attn2_replace(interrupt_first_call, "input", 1)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        generate(interrupting)
    assert not cache.entries
    torch.testing.assert_close(generate(interrupting), generate(tiny_sd15))


def test_an_uncapturable_patch_falls_back_to_eager_with_the_reason(tiny_sd15):
    fast_model, cache = fast(tiny_sd15)
    failing = fast_model.clone()
    failing.set_model_attn2_replace(lambda q, k, v, extra_options: 1 / 0, "input", 1)
    with pytest.raises(ZeroDivisionError):
        generate(failing)
    assert cache.failed and "ZeroDivisionError" in next(iter(cache.failed.values()))


def test_memory_stays_flat_over_100_prompts(tiny_sd15):
    fast_model, cache = fast(tiny_sd15)
    process = psutil.Process()
    for seed in range(10):
        generate(fast_model, seed=seed, size=32)
    baseline = process.memory_info().rss
    for seed in range(100):
        generate(fast_model, prompt_seed=seed % 3, seed=seed, size=32)
    growth_mb = (process.memory_info().rss - baseline) / 2**20
    assert len(cache.entries) <= cache.max_entries
    assert growth_mb < 50, f"resident memory grew by {growth_mb:.1f} MB over 100 prompts"


def test_fast_decode_equals_the_stock_vae_decode(comfy_host):
    import comfy.sd
    from onestep.nodes.fast_path import OneStepFastDecode
    from random_models import random_sd_vae_state_dict

    vae = comfy.sd.VAE(sd=random_sd_vae_state_dict())
    latent = {"samples": torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
    for strategy in ("static-eager", "auto"):
        image = OneStepFastDecode.execute(latent, vae, strategy).result[0]
        assert image.shape == (2, 32, 32, 3)
        torch.testing.assert_close(image, vae.decode(latent["samples"]))
