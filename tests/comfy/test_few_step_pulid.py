"""PuLID on a DMD2 student in-process: Apply PuLID in front of OneStep Generate with the DMD2 1-step preset, on a small
SDXL-structured model with small PuLID weights, where the identity's effect is large enough to see (the shipped
workflow runs on the server in tests/e2e/test_few_step_workflows.py)."""

import comfy.supported_models
import numpy as np
import torch
from comfy_host import SDXL_UNET_CONFIG, tiny_model_patcher
from onestep.distill.student_file import StudentInfo
from onestep.nodes.presets import STUDENT_INFO_KEY
from onestep.nodes.pulid_apply import ApplyPuLID
from onestep.nodes.pulid_embed import PulidEmbedding
from onestep.nodes.pulid_loaders import PulidModel
from onestep.nodes.sampling import OneStepGenerate, OneStepSigmas
from onestep.pulid.encoders import IDFormer
from onestep.pulid.weights import SDXL_CROSS_ATTENTION_SLOTS, Layout, PuLIDSDXL

TOKEN_DIM = 8
SMALL_SDXL = {**SDXL_UNET_CONFIG, "model_channels": 32, "context_dim": 16, "num_head_channels": 16}
SMALL_WIDTH = {640: 64, 1280: 128}  # SDXL's widths -> the small model's


def small_pulid() -> PulidModel:
    torch.manual_seed(0)
    encoder = IDFormer(dim=8, dim_head=4, heads=2, output_dim=TOKEN_DIM, id_dim=12, vit_width=6)
    module = PuLIDSDXL(encoder, [SMALL_WIDTH[h] for *_, h in SDXL_CROSS_ATTENTION_SLOTS], context_dim=TOKEN_DIM)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.3)
    return PulidModel(Layout("pulid_sdxl", "sdxl", "IDFormer"), module.eval(), "small_pulid_v1.1.safetensors")


def identity() -> PulidEmbedding:
    generator = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, 6, TOKEN_DIM, generator=generator) for _ in range(2))
    return PulidEmbedding(cond, uncond, "sdxl", np.zeros((1, 512), np.float32), "test")


def test_pulid_acts_on_the_dmd2_students_single_step_at_timestep_399():
    student = tiny_model_patcher(comfy.supported_models.SDXL, SMALL_SDXL)
    student.model_options[STUDENT_INFO_KEY] = StudentInfo(preset="dmd2-sdxl-1step", steps=1)
    patched = ApplyPuLID.execute(student, small_pulid(), identity(), weight=1.0, start_at=0.0, end_at=1.0,
                                 preset="fidelity", projection="ortho_v2", num_zero_tokens=8).result[0]
    positive = [[torch.randn(1, 5, 16, generator=torch.manual_seed(3)), {"pooled_output": torch.zeros(1, 1280)}]]
    inputs = dict(seed=4, batch_size=1, width=64, height=64, preset="dmd2-sdxl-1step", steps=1, custom_value=0.0)
    plain = OneStepGenerate.execute(student, positive, **inputs).result[0]["samples"]
    with_id = OneStepGenerate.execute(patched, positive, **inputs).result[0]["samples"]
    again = OneStepGenerate.execute(student, positive, **inputs).result[0]["samples"]
    assert float((with_id - plain).abs().max()) > 1e-3, "the identity changed the one step"
    torch.testing.assert_close(again, plain)  # the student itself is untouched
    sigma_399 = float(student.get_model_object("model_sampling").sigma(torch.tensor(399.0)))
    assert OneStepSigmas.execute(patched, "auto", 1, 0.0).result[0].tolist()[0] == sigma_399
