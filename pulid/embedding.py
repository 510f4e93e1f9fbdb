"""The PuLID ID pipeline: reference image(s) -> ``id_cond`` + EVA-CLIP hidden states -> ID tokens.

Official ``pulid/pipeline*.py`` ``get_id_embedding``: ``id_cond = cat(raw ArcFace 512-d, normalised
EVA-CLIP CLS 768-d)``; the encoder maps it and the 5 hidden states to ID tokens; the unconditional
tokens are the encoder applied to zeros of the same shapes. The crop is aligned on the landmarks of the
same detection that gives the ArcFace embedding (the official code runs a second detector, facexlib's
RetinaFace, for the crop).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .encoders import IDEncoder, IDFormer
from .eva_clip import eva_clip_features
from .face_analysis import DET_SIZES, Face, FaceAnalyzer, detect_faces, select_face
from .face_crop import (
    PARSING_MEAN,
    PARSING_STD,
    align_face,
    clip_pixels,
    face_features_image,
    normalize,
    resize_long_edge,
    to_tensor,
)

ARCFACE_DIM = 512
FUSIONS = ("mean", "concat", "joint")


@dataclass
class FaceCondition:
    id_cond: torch.Tensor  # [1, 1280]
    vit_hidden: list[torch.Tensor]  # 5 x [1, 577, 1024]
    face: Face  # in the (long edge <= 1024) image
    crop: np.ndarray  # aligned 512x512 RGB crop
    features: torch.Tensor  # [1, 3, 512, 512] gray / whitened image that EVA-CLIP saw (before resizing)


def face_condition(
    image: np.ndarray,
    analyzer: FaceAnalyzer,
    eva: nn.Module,
    image_name: str = "the reference image",
    parse: Callable[[torch.Tensor], torch.Tensor] | None = None,
    order: str = "largest",
    index: int = 0,
    det_sizes=DET_SIZES,
) -> FaceCondition:
    """``id_cond`` and ViT hidden states of one face of an RGB uint8 image. ``parse`` (optional, e.g. BiSeNet)
    maps the ImageNet-normalised 512 crop [1, 3, 512, 512] to parsing logits or labels."""
    image = resize_long_edge(image)
    face = select_face(detect_faces(analyzer, image, image_name, det_sizes), order, index, image_name)
    arcface = analyzer.embed(image, face)
    if arcface.shape[-1] != ARCFACE_DIM:
        raise ValueError(
            f"PuLID needs the 512-d ArcFace embedding of antelopev2 (glintr100.onnx); "
            f"{analyzer.name} gives {arcface.shape[-1]}-d"
        )
    parameter = next(eva.parameters())
    crop = align_face(image, face.landmarks)
    face_pixels = to_tensor(crop).to(parameter.device)
    parsing = parse(normalize(face_pixels, PARSING_MEAN, PARSING_STD)) if parse else None
    features = face_features_image(face_pixels, parsing)
    cls, hidden = eva_clip_features(eva, clip_pixels(features).to(parameter.dtype))
    id_cond = torch.cat([torch.from_numpy(arcface).to(cls)[None], cls], dim=-1)
    return FaceCondition(id_cond, hidden, face, crop, features)


def encode(encoder: nn.Module, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
    """ID tokens [B, T, 2048] of an encoder, inputs cast to its device and dtype."""
    parameter = next(encoder.parameters())
    cast = {"device": parameter.device, "dtype": parameter.dtype}
    return encoder(id_cond.to(**cast), [hidden.to(**cast) for hidden in vit_hidden])


def uncond_tokens(encoder: nn.Module, condition: FaceCondition) -> torch.Tensor:
    """The encoder applied to zeros shaped like one reference's inputs (official ``uncond_id_embedding``)."""
    return encode(encoder, torch.zeros_like(condition.id_cond), [torch.zeros_like(h) for h in condition.vit_hidden])


def concat_tokens(
    tokens: list[torch.Tensor], uncond: torch.Tensor, keep: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first reference's tokens, then the first ``keep`` tokens of each further one (all when None), and the
    uncond tokens cut and joined the same way: official v1 ``app.py``, ``cat((id_embeddings, supp_id_embeddings if
    id_mix else supp_id_embeddings[:, :5]), dim=1)`` on cond and uncond together."""
    cond = torch.cat([tokens[0], *(t[:, :keep] for t in tokens[1:])], dim=1)
    return cond, torch.cat([uncond, *(uncond[:, :keep] for _ in tokens[1:])], dim=1)


def id_tokens(
    encoder: nn.Module, conditions: list[FaceCondition], fusion: str = "mean", id_mix: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) ID tokens [1, T, 2048] of one person from one or more references.

    Fusion of several references: ``mean`` of their tokens; ``concat`` of their tokens along the sequence
    (official v1 app: without ``id_mix``, its default, an IDEncoder's further references add only their 5 ID
    tokens, the ones made from ``id_cond``; with it, all 10; IDFormer references add all their tokens);
    ``joint``: one encoding of all references (IDFormer: the official v1.1 multi-image input, every reference's ID
    tokens joining the latents and its ViT tokens the context; IDEncoder, which has no such input: the averaged
    ``id_cond`` and hidden states).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    uncond = uncond_tokens(encoder, conditions[0])
    if fusion == "joint" and len(conditions) > 1:
        levels = list(zip(*(c.vit_hidden for c in conditions), strict=True))
        if isinstance(encoder, IDFormer):
            id_cond = torch.stack([c.id_cond for c in conditions], dim=1)
            return encode(encoder, id_cond, [torch.cat(level, dim=1) for level in levels]), uncond
        id_cond = torch.stack([c.id_cond for c in conditions]).mean(0)
        return encode(encoder, id_cond, [torch.stack(level).mean(0) for level in levels]), uncond
    tokens = [encode(encoder, c.id_cond, c.vit_hidden) for c in conditions]
    if fusion == "concat":
        keep = encoder.num_token if isinstance(encoder, IDEncoder) and not id_mix else None
        return concat_tokens(tokens, uncond, keep)
    return torch.stack(tokens).mean(0), uncond
