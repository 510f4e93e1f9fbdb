"""EVA02-CLIP-L-14-336 through timm: official checkpoint names load, the right hidden states come out.

The full-size tower takes ~15 s per forward on two busy CPU cores, so forwards use the same timm
architecture at width 64 (21 blocks, enough for the state entering block 20); the full-size key and shape
match is checked on the meta device.
"""

import argparse

import pytest
import torch
from onestep.pulid.eva_clip import (
    HIDDEN_BLOCKS,
    EvaClipFileError,
    build_eva02_clip_l14_336,
    eva_clip_features,
    load_eva02_clip_l14_336,
)
from onestep.pulid.tensor_files import PickledFileError
from safetensors.torch import save_file
from timm.models.eva import checkpoint_filter_fn

SMALL = {"embed_dim": 64, "num_heads": 4, "depth": 21}


def official_visual_shapes(width=1024, depth=24, embed=768, patch=14, image=336) -> dict[str, tuple]:
    """Tensor names and shapes of the official EVA-CLIP ``visual`` tower (eva_clip/eva_vit_model.py with
    subln, naive SwiGLU, xattn rope; EVA02-CLIP-L-14-336.json), written out independently of timm."""
    hidden, tokens = int(width * 2.6667), (image // patch) ** 2 + 1
    shapes = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, tokens, width),
        "patch_embed.proj.weight": (width, 3, patch, patch),
        "patch_embed.proj.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
        "head.weight": (embed, width),
        "head.bias": (embed,),
        "rope.freqs_cos": (tokens - 1, width // 16),
        "rope.freqs_sin": (tokens - 1, width // 16),
    }
    for i in range(depth):
        block = {
            "norm1.weight": (width,),
            "norm1.bias": (width,),
            "norm2.weight": (width,),
            "norm2.bias": (width,),
            "attn.q_proj.weight": (width, width),
            "attn.k_proj.weight": (width, width),
            "attn.v_proj.weight": (width, width),
            "attn.q_bias": (width,),
            "attn.v_bias": (width,),
            "attn.inner_attn_ln.weight": (width,),
            "attn.inner_attn_ln.bias": (width,),
            "attn.proj.weight": (width, width),
            "attn.proj.bias": (width,),
            "attn.rope.freqs_cos": (tokens - 1, width // 16),
            "attn.rope.freqs_sin": (tokens - 1, width // 16),
            "mlp.w1.weight": (hidden, width),
            "mlp.w1.bias": (hidden,),
            "mlp.w2.weight": (hidden, width),
            "mlp.w2.bias": (hidden,),
            "mlp.ffn_ln.weight": (hidden,),
            "mlp.ffn_ln.bias": (hidden,),
            "mlp.w3.weight": (width, hidden),
            "mlp.w3.bias": (width,),
        }
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def official_checkpoint(**dims) -> dict[str, torch.Tensor]:
    """A whole-CLIP checkpoint: random ``visual.*`` tensors plus text tower entries that must be ignored."""
    g = torch.Generator().manual_seed(0)
    checkpoint = {
        f"visual.{name}": torch.randn(shape, generator=g) * 0.02
        for name, shape in official_visual_shapes(**dims).items()
    }
    checkpoint.update({"text.token_embedding.weight": torch.randn(10, 8), "logit_scale": torch.tensor(4.6)})
    return checkpoint


SMALL_OFFICIAL = {"width": 64, "depth": 21}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_tower():
    torch.manual_seed(0)
    return build_eva02_clip_l14_336(**SMALL)


def test_full_size_timm_tower_takes_the_official_names_and_shapes():
    with torch.device("meta"):
        model = build_eva02_clip_l14_336()
        official = {name: torch.empty(shape) for name, shape in official_visual_shapes().items()}
    mapped = checkpoint_filter_fn({f"visual.{k}": v for k, v in official.items()}, model)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_official_pt_and_visual_safetensors_load(tmp_path, small_tower):
    checkpoint = official_checkpoint(**SMALL_OFFICIAL)
    torch.save(checkpoint, tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt")
    torch.save({"state_dict": checkpoint}, tmp_path / "wrapped.pt")
    save_file({k: v for k, v in checkpoint.items() if k.startswith("visual.")}, tmp_path / "eva_visual.safetensors")
    for name in ("EVA02_CLIP_L_336_psz14_s6B.pt", "wrapped.pt", "eva_visual.safetensors"):
        model = load_eva02_clip_l14_336(tmp_path / name, build_eva02_clip_l14_336(**SMALL))
        state = model.state_dict()
        assert torch.equal(state["blocks.3.attn.q_proj.bias"], checkpoint["visual.blocks.3.attn.q_bias"])
        assert torch.equal(state["blocks.3.mlp.fc1_g.weight"], checkpoint["visual.blocks.3.mlp.w1.weight"])
        assert torch.equal(state["blocks.3.attn.norm.weight"], checkpoint["visual.blocks.3.attn.inner_attn_ln.weight"])
        assert torch.equal(state["head.weight"], checkpoint["visual.head.weight"])


def test_another_tower_is_refused_before_any_resampling(tmp_path, small_tower):
    checkpoint = official_checkpoint(width=64, depth=21, image=224)  # an L-14-224 layout: 257 tokens
    save_file(checkpoint, tmp_path / "EVA02_CLIP_L_psz14_s4B.safetensors")
    with pytest.raises(EvaClipFileError, match=r"not the EVA02-CLIP-L-14-336 .*pos_embed is shape \[1, 257, 64\]"):
        load_eva02_clip_l14_336(tmp_path / "EVA02_CLIP_L_psz14_s4B.safetensors", small_tower)
    with pytest.raises(EvaClipFileError, match="missing"):
        save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
        load_eva02_clip_l14_336(tmp_path / "other.safetensors", small_tower)


def test_pickled_objects_are_never_run(tmp_path, small_tower):
    torch.save({"args": argparse.Namespace(lr=1.0), **official_checkpoint(**SMALL_OFFICIAL)}, tmp_path / "eva.pt")
    with pytest.raises(PickledFileError, match="eva.pt .* pickle"):
        load_eva02_clip_l14_336(tmp_path / "eva.pt", small_tower)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_eva02_clip_l14_336(tmp_path / "absent.pt", small_tower)


def test_features_are_the_states_entering_blocks_4_to_20_and_the_normalised_cls(small_tower):
    entering = {}
    hooks = [
        small_tower.blocks[i].register_forward_pre_hook(
            lambda module, args, i=i: entering.__setitem__(i, args[0].clone())
        )
        for i in HIDDEN_BLOCKS
    ]
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cls, hidden = eva_clip_features(small_tower, pixels)
        projected = small_tower(pixels)
    for hook in hooks:
        hook.remove()
    assert [h.shape for h in hidden] == [(2, 577, 64)] * 5
    for h, i in zip(hidden, HIDDEN_BLOCKS, strict=True):
        torch.testing.assert_close(h, entering[i], rtol=0, atol=0)
    assert cls.shape == (2, 768)
    torch.testing.assert_close(cls, projected / projected.norm(dim=-1, keepdim=True))
