"""ID encoders and the four released PuLID weight layouts, written as real files and read by the real loaders.

Official-size files are 0.9-1.7 GB, so the files here hold the exact official key names and structure
(70 SDXL cross-attentions, 20 FLUX modules, full encoder depth) at small widths; the official-size
shapes are checked on the meta device against a table written from the official code.
"""

import argparse

import pytest
import torch
from onestep.pulid.encoders import IDEncoder, IDFormer
from onestep.pulid.injection import PerceiverAttentionCA, flux_injection_indices
from onestep.pulid.tensor_files import PickledFileError
from onestep.pulid.weights import (
    SDXL_CROSS_ATTENTION_SLOTS,
    Layout,
    PuLIDFlux,
    PuLIDSDXL,
    PulidWeightsError,
    detect_layout,
    encoder_key_count,
    expect_base,
    load_pulid,
    official_model,
    sdxl_projection_widths,
)
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_shapes(prefix, dims):
    """Official Linear-LN-LeakyReLU-Linear-LN-LeakyReLU-Linear: entries 0, 1, 3, 4, 6."""
    d_in, h1, h2, d_out = dims
    return {
        f"{prefix}.0.weight": (h1, d_in),
        f"{prefix}.0.bias": (h1,),
        f"{prefix}.1.weight": (h1,),
        f"{prefix}.1.bias": (h1,),
        f"{prefix}.3.weight": (h2, h1),
        f"{prefix}.3.bias": (h2,),
        f"{prefix}.4.weight": (h2,),
        f"{prefix}.4.bias": (h2,),
        f"{prefix}.6.weight": (d_out, h2),
        f"{prefix}.6.bias": (d_out,),
    }


def official_v1_encoder_shapes():
    """pulid/encoders.py IDEncoder(width=1280, context_dim=2048, num_token=5)."""
    shapes = mlp_shapes("body", (1280, 1024, 1024, 10240))
    for i in range(5):
        shapes |= mlp_shapes(f"mapping_{i}", (1024, 1024, 1024, 2048)) | mlp_shapes(
            f"mapping_patch_{i}", (1024, 1024, 1024, 2048)
        )
    return shapes


def official_v11_encoder_shapes():
    """pulid/encoders_transformer.py IDFormer() defaults."""
    shapes = {"latents": (1, 32, 1024), "proj_out": (1024, 2048)} | mlp_shapes(
        "id_embedding_mapping", (1280, 1024, 1024, 5120)
    )
    for i in range(10):
        shapes |= {
            f"layers.{i}.0.norm1.weight": (1024,),
            f"layers.{i}.0.norm1.bias": (1024,),
            f"layers.{i}.0.norm2.weight": (1024,),
            f"layers.{i}.0.norm2.bias": (1024,),
            f"layers.{i}.0.to_q.weight": (1024, 1024),
            f"layers.{i}.0.to_kv.weight": (2048, 1024),
            f"layers.{i}.0.to_out.weight": (1024, 1024),
            f"layers.{i}.1.0.weight": (1024,),
            f"layers.{i}.1.0.bias": (1024,),
            f"layers.{i}.1.1.weight": (4096, 1024),
            f"layers.{i}.1.3.weight": (1024, 4096),
        }
    for i in range(5):
        shapes |= mlp_shapes(f"mapping_{i}", (1024, 1024, 1024, 1024))
    return shapes


def prefixed(prefix, shapes):
    return {f"{prefix}.{name}": shape for name, shape in shapes.items()}


def official_sdxl_attention_shapes():
    """diffusers SDXL attn processors: down_blocks.1 (640) x4, down_blocks.2 (1280) x20, up_blocks.0 (1280) x30,
    up_blocks.1 (640) x6, mid_block (1280) x10; cross-attentions are the odd entries."""
    hidden = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    shapes = {}
    for n, size in enumerate(hidden):
        shapes[f"id_adapter_attn_layers.{2 * n + 1}.id_to_k.weight"] = (size, 2048)
        shapes[f"id_adapter_attn_layers.{2 * n + 1}.id_to_v.weight"] = (size, 2048)
    return shapes


def official_flux_ca_shapes():
    """pulid/encoders_flux.py PerceiverAttentionCA(dim=3072, dim_head=128, heads=16, kv_dim=2048), 20 of them."""
    one = {
        "norm1.weight": (2048,),
        "norm1.bias": (2048,),
        "norm2.weight": (3072,),
        "norm2.bias": (3072,),
        "to_q.weight": (2048, 3072),
        "to_kv.weight": (4096, 2048),
        "to_out.weight": (3072, 2048),
    }
    return {f"pulid_ca.{i}.{name}": shape for i in range(20) for name, shape in one.items()}


def shapes_of(module):
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def test_official_size_modules_have_the_official_keys_and_shapes():
    assert shapes_of(official_model(Layout("pulid_sdxl", "sdxl", "IDEncoder"))) == (
        prefixed("id_adapter", official_v1_encoder_shapes()) | official_sdxl_attention_shapes()
    )
    assert shapes_of(official_model(Layout("pulid_sdxl", "sdxl", "IDFormer"))) == (
        prefixed("id_adapter", official_v11_encoder_shapes()) | official_sdxl_attention_shapes()
    )
    assert shapes_of(official_model(Layout("pulid_flux", "flux", "IDFormer"))) == (
        prefixed("pulid_encoder", official_v11_encoder_shapes()) | official_flux_ca_shapes()
    )
    assert (encoder_key_count("IDEncoder"), encoder_key_count("IDFormer")) == (110, 172)


def test_sdxl_slots_follow_the_official_index_order():
    assert len(SDXL_CROSS_ATTENTION_SLOTS) == 70
    assert SDXL_CROSS_ATTENTION_SLOTS[0] == ("input", 4, 0, 640)
    assert SDXL_CROSS_ATTENTION_SLOTS[4] == ("input", 7, 0, 1280)
    assert SDXL_CROSS_ATTENTION_SLOTS[24] == ("output", 0, 0, 1280)
    assert SDXL_CROSS_ATTENTION_SLOTS[-1] == ("middle", 0, 9, 1280)
    model = official_model(Layout("pulid_sdxl", "sdxl", "IDFormer"))
    assert model.projection(69) is model.id_adapter_attn_layers["139"]


# small modules with the official structure and key names
SMALL_ENCODER = {
    "IDEncoder": dict(width=12, context_dim=8, vit_width=6),
    "IDFormer": dict(dim=8, dim_head=4, heads=2, output_dim=8, id_dim=12, vit_width=6),
}


def small_sdxl(encoder):
    return PuLIDSDXL(
        IDEncoder(**SMALL_ENCODER["IDEncoder"]) if encoder == "IDEncoder" else IDFormer(**SMALL_ENCODER["IDFormer"]),
        [4 if hidden == 640 else 6 for *_, hidden in SDXL_CROSS_ATTENTION_SLOTS],
        context_dim=8,
    )


def small_flux():
    return PuLIDFlux(
        IDFormer(**SMALL_ENCODER["IDFormer"]),
        [PerceiverAttentionCA(dim=6, dim_head=2, heads=2, kv_dim=8) for _ in flux_injection_indices()],
    )


def random_state(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tensor.shape, generator=g) for name, tensor in module.state_dict().items()}


def assert_loaded(model, expected):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], expected[name]) for name in expected)


def test_official_v1_bin(tmp_path):
    state = random_state(small_sdxl("IDEncoder"))
    torch.save(state, tmp_path / "pulid_v1.bin")
    layout, model = load_pulid(tmp_path / "pulid_v1.bin", small_sdxl("IDEncoder"))
    assert (layout.name, layout.base, layout.version) == ("pulid_sdxl", "sdxl", "v1")
    assert_loaded(model, state)
    tokens = model.id_adapter(torch.randn(1, 12), [torch.randn(1, 5, 6)] * 5)
    assert tokens.shape == (1, 10, 8)


def test_official_v11_safetensors(tmp_path):
    state = random_state(small_sdxl("IDFormer"))
    save_file(state, tmp_path / "pulid_v1.1.safetensors")
    layout, model = load_pulid(tmp_path / "pulid_v1.1.safetensors", small_sdxl("IDFormer"))
    assert (layout.name, layout.version) == ("pulid_sdxl", "v1.1")
    assert_loaded(model, state)
    assert model.id_adapter(torch.randn(1, 12), [torch.randn(1, 5, 6)] * 5).shape == (1, 32, 8)


def test_ip_adapter_layout(tmp_path):
    state = random_state(small_sdxl("IDEncoder"))
    renamed = {}
    for name, tensor in state.items():
        if name.startswith("id_adapter."):
            renamed["image_proj." + name.removeprefix("id_adapter.")] = tensor
        else:
            index, projection = name.split(".")[1:3]
            renamed[f"ip_adapter.{index}.{ {'id_to_k': 'to_k_ip', 'id_to_v': 'to_v_ip'}[projection] }.weight"] = tensor
    assert "ip_adapter.139.to_v_ip.weight" in renamed
    save_file({k: v.half() for k, v in renamed.items()}, tmp_path / "ip-adapter_pulid_sdxl_fp16.safetensors")
    layout, model = load_pulid(tmp_path / "ip-adapter_pulid_sdxl_fp16.safetensors", small_sdxl("IDEncoder"))
    assert (layout.name, layout.version) == ("ip_adapter_sdxl", "v1")
    assert_loaded(model, {k: v.half() for k, v in state.items()})


def test_flux_layout(tmp_path):
    state = random_state(small_flux())
    save_file(state, tmp_path / "pulid_flux_v0.9.1.safetensors")
    layout, model = load_pulid(tmp_path / "pulid_flux_v0.9.1.safetensors", small_flux())
    assert (layout.name, layout.base, layout.version) == ("pulid_flux", "flux", "v1.1")
    assert_loaded(model, state)
    assert len(model.pulid_ca) == 20


def test_the_sdxl_projection_widths_are_read_from_the_file():
    """A file for an SDXL-structured network of other widths loads as wide as it is (Apply PuLID then checks the
    widths against the model's cross-attentions); a missing projection keeps SDXL's width, for strict loading to
    name it."""
    state = random_state(small_sdxl("IDFormer"))
    assert sdxl_projection_widths(state) == [4 if hidden == 640 else 6 for *_, hidden in SDXL_CROSS_ATTENTION_SLOTS]
    del state["id_adapter_attn_layers.139.id_to_k.weight"]
    assert sdxl_projection_widths(state)[-1] == 1280
    widths = [320] * 70
    model = official_model(Layout("pulid_sdxl", "sdxl", "IDFormer"), widths)
    assert [model.projection(slot).id_to_v.weight.shape for slot in (0, 69)] == [(320, 2048)] * 2
    assert shapes_of(model.id_adapter) == shapes_of(official_model(Layout("pulid_sdxl", "sdxl", "IDFormer")).id_adapter)


def test_wrong_base_both_ways():
    flux, sdxl = Layout("pulid_flux", "flux", "IDFormer"), Layout("pulid_sdxl", "sdxl", "IDFormer")
    expect_base(flux, "flux")
    with pytest.raises(PulidWeightsError, match="FLUX weights .* the model is SDXL.*pulid_v1.1.safetensors"):
        expect_base(flux, "sdxl")
    with pytest.raises(PulidWeightsError, match="SDXL weights .* the model is FLUX.*pulid_flux_v0.9.x"):
        expect_base(sdxl, "flux")


def test_strict_loading_names_what_is_wrong(tmp_path):
    state = random_state(small_sdxl("IDFormer"))
    del state["id_adapter_attn_layers.77.id_to_v.weight"]
    save_file(state, tmp_path / "cut.safetensors")
    with pytest.raises(PulidWeightsError, match="id_adapter_attn_layers.77.id_to_v.weight"):
        load_pulid(tmp_path / "cut.safetensors", small_sdxl("IDFormer"))
    state = random_state(small_sdxl("IDFormer"))
    state["id_adapter.proj_out"] = torch.zeros(8, 9)
    save_file(state, tmp_path / "shape.safetensors")
    with pytest.raises(PulidWeightsError, match="size mismatch for id_adapter.proj_out"):
        load_pulid(tmp_path / "shape.safetensors", small_sdxl("IDFormer"))


def test_not_pulid_files(tmp_path):
    with pytest.raises(PulidWeightsError, match="not a PuLID weight file"):
        detect_layout({"model.diffusion_model.x": torch.zeros(1)})
    with pytest.raises(PulidWeightsError, match="3 encoder keys"):
        detect_layout(
            {"id_adapter.a": 0, "id_adapter.b": 0, "id_adapter.c": 0, "id_adapter_attn_layers.1.id_to_k.weight": 0}
        )
    torch.save({"args": argparse.Namespace(x=1)}, tmp_path / "pickled.bin")
    with pytest.raises(PickledFileError, match="pickled.bin .* pickle"):
        load_pulid(tmp_path / "pickled.bin")
    with pytest.raises(FileNotFoundError, match=f"looked in {tmp_path}"):
        load_pulid(tmp_path / "pulid_v1.1.safetensors")
