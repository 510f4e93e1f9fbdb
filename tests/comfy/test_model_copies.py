"""The trainer's copies of a ComfyUI teacher own their networks and share ComfyUI's objects, on every host.

ComfyUI 0.28's model config answers None for any attribute it lacks (``__deepcopy__`` and ``__setstate__``
included), so ``copy.deepcopy`` of anything holding one fails there. ``StrictHostSD15`` gives the config that
behaviour on any host, so these tests catch a deep copy of the config on 0.3.75 as well.
"""

import copy

import comfy.supported_models
import pytest
import torch
from onestep.nodes.distill_trainer import ComfyDenoiser, PromptSet, trainable_copy
from trainer_helpers import train, weights

pytestmark = pytest.mark.usefixtures("one_thread")


class StrictHostSD15(comfy.supported_models.SD15):
    """SD1.5's config answering None for a missing attribute, as ComfyUI 0.28's ``BASE.__getattr__`` does."""

    def __getattr__(self, name):
        return None


@pytest.fixture
def strict_sd15(comfy_host):
    return comfy_host.tiny_model_patcher(StrictHostSD15)


def test_a_config_that_answers_every_attribute_cannot_be_deep_copied(strict_sd15):
    """The premise: without the pack's copy rule, the host's config breaks copy.deepcopy."""
    with pytest.raises(TypeError):
        copy.deepcopy(strict_sd15.model.model_config)


@pytest.mark.parametrize("copy_of", [lambda model: trainable_copy(model),
                                     lambda model: trainable_copy(ComfyDenoiser(model, "c_crossattn")).base_model,
                                     lambda model: copy.deepcopy(ComfyDenoiser(model, "c_crossattn")).base_model],
                         ids=["model", "denoiser", "deepcopy-of-denoiser"])
def test_copies_own_their_weights_and_share_the_config(strict_sd15, copy_of):
    original = strict_sd15.model
    copied = copy_of(original)
    assert copied is not original and copied.model_config is original.model_config
    assert copied.latent_format is original.latent_format
    assert copied.diffusion_model is not original.diffusion_model
    assert copied.model_sampling is not original.model_sampling
    own = {p.data_ptr() for p in copied.parameters()}
    assert own.isdisjoint(p.data_ptr() for p in original.parameters())
    assert getattr(copied, "current_patcher", None) is None
    x, sigma, context = torch.randn(2, 4, 4, 4), torch.tensor([0.5, 3.0]), torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(copied.apply_model(x, sigma, c_crossattn=context),
                                   original.apply_model(x, sigma, c_crossattn=context))
        next(copied.diffusion_model.parameters()).add_(1.0)
        assert not torch.equal(copied.apply_model(x, sigma, c_crossattn=context),
                               original.apply_model(x, sigma, c_crossattn=context))


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_the_trainer_distills_a_teacher_whose_config_answers_every_attribute(strict_sd15, lora_rank):
    before = weights(strict_sd15)
    torch.manual_seed(1)
    prompts = PromptSet(torch.randn(3, 7, 32), torch.zeros(1, 7, 32), "text")
    student = train(strict_sd15, prompts, run_name=f"strict{lora_rank}", method="sid", alpha=1.0, iterations=2,
                    width=32, height=32, batch_size=2, checkpoint_every=0, preview_every=0, lora_rank=lora_rank)[0]
    assert student.model.model_config is strict_sd15.model.model_config
    assert all(torch.equal(before[k], v) for k, v in weights(strict_sd15).items()), "the teacher is untouched"
    assert any(not torch.equal(before[k], v) for k, v in weights(student).items()), "the student learned"

