"""PuLID Embed Face (reference photos -> ID tokens) and ID Similarity (recognition cosine of generated faces)."""

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import comfy.model_management
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io, ui

from .pulid_loaders import EVA_CLIP, FACE_ANALYSIS, FACE_PARSING, PULID, PulidModel

PULID_EMBEDDING = io.Custom("PULID_EMBEDDING")
NO_FACE_CHOICES = ("error", "skip image")
NO_PARSING_WARNING = (
    "PuLID Embed Face: this embedding was made without face parsing, so EVA-CLIP saw the whole gray crop "
    "(background, clothes, neck, ears, hat). The official PuLID pipeline parses the face with BiSeNet and whitens "
    "them: connect PuLID Load Face Parsing (facexlib's parsing_bisenet.pth in models/facexlib) to face_parsing."
)


@dataclass
class PulidEmbedding:
    """One person's ID tokens (cond and the encoder-of-zeros uncond, [1, T, 2048]) and where they came from."""

    cond: torch.Tensor
    uncond: torch.Tensor
    base: str  # "sdxl" | "flux": the PuLID weights that encoded it
    recognition: np.ndarray  # [references, 512] raw ArcFace embeddings, for similarity checks and guards
    analyzer_name: str
    skipped: list[str] = field(default_factory=list)


def image_names(count: int) -> list[str]:
    return [f"reference image {i + 1} of {count}" for i in range(count)]


def annotate(image: np.ndarray, face, size: tuple[int, int]) -> np.ndarray:
    """The image as PuLID analysed it (long edge <= 1024) with the face box and 5 landmarks drawn, resized to
    ``size`` (height, width) so that references of different sizes make one IMAGE batch."""
    import cv2

    from ..pulid.face_crop import resize_long_edge

    out = np.ascontiguousarray(resize_long_edge(image))
    thickness = max(2, round(max(image.shape[:2]) / 256))
    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thickness)
    for x, y in face.landmarks:
        cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, (255, 0, 0), -1)
    return cv2.resize(out, (size[1], size[0]), interpolation=cv2.INTER_AREA) if out.shape[:2] != size else out


def to_image_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(image).float() / 255 for image in images])


class PuLIDEmbedFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..pulid.embedding import FUSIONS
        from ..pulid.face_analysis import FACE_ORDERS

        return io.Schema(
            node_id="OneStepPuLIDEmbedFace",
            display_name="PuLID Embed Face",
            category="OneStep/PuLID",
            description="One person's identity from one or more reference photos: InsightFace detection and "
                        "ArcFace embedding, aligned gray face crop (background, cloth, hat, ears and neck "
                        "whitened when a face parser is given), EVA-CLIP features, PuLID's ID encoder.",
            inputs=[
                PULID.Input("pulid", tooltip="From PuLID Load Model: its encoder makes the ID tokens."),
                EVA_CLIP.Input("eva_clip", tooltip="From PuLID Load EVA-CLIP."),
                FACE_ANALYSIS.Input("face_analysis", tooltip="From PuLID Load Face Analysis (antelopev2)."),
                io.Image.Input("image", tooltip="Reference photo(s) of ONE person; a batch gives several references."),
                io.Combo.Input("fusion", options=list(FUSIONS), default="mean",
                               tooltip="Several references: mean of their ID tokens, concat (longer token list), "
                                       "or joint (one encoding of all of them; v1.1/FLUX encoders take them "
                                       "together)."),
                io.Combo.Input("face_order", options=list(FACE_ORDERS), default="largest",
                               tooltip="Which face of a photo with several: counted from the largest, or from the "
                                       "left."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="0 = the first face in face_order."),
                io.Combo.Input("if_no_face", options=list(NO_FACE_CHOICES), default="error",
                               tooltip="error: stop and say which image. skip image: leave that reference out "
                                       "(an error if none has a face)."),
                io.Boolean.Input("id_mix", default=False, optional=True,
                                 tooltip="fusion concat with PuLID v1 weights only (the official v1 app's ID Mix, "
                                         "off by default): off = each reference after the first adds only its 5 "
                                         "ID tokens (from ArcFace + EVA-CLIP CLS), for one person seen in several "
                                         "photos; on = all 10 of its tokens, to mix two people. No effect with "
                                         "v1.1 / FLUX weights or other fusions."),
                FACE_PARSING.Input("face_parsing", optional=True,
                                   tooltip="Optional, from PuLID Load Face Parsing (BiSeNet): whiten the "
                                           "background, cloth, hat, ears and neck of the crop, as the official "
                                           "PuLID does. Without it EVA-CLIP sees the whole gray crop."),
            ],
            outputs=[
                PULID_EMBEDDING.Output(display_name="embedding", tooltip="ID tokens for Apply PuLID."),
                io.Image.Output("faces", display_name="faces",
                                tooltip="Each reference with the detected box and landmarks."),
                io.Image.Output("crops", display_name="crops",
                                tooltip="The aligned 512 px gray (and, with a face parser, whitened) "
                                                 "crops EVA-CLIP saw."),
            ],
        )

    @classmethod
    def execute(cls, pulid: PulidModel, eva_clip, face_analysis, image, fusion, face_order, face_index,
                if_no_face, face_parsing=None, id_mix=False) -> io.NodeOutput:
        from ..pulid.embedding import ARCFACE_DIM, id_tokens
        from ..pulid.face_crop import images_to_uint8

        photos = images_to_uint8(image)
        names = image_names(len(photos))
        progress = comfy.utils.ProgressBar(len(photos) + 1)
        parsers = [] if face_parsing is None else [face_parsing]
        with torch.inference_mode(), on_device(eva_clip, pulid.encoder, *parsers):
            conditions, skipped = face_conditions(photos, names, face_analysis, eva_clip, face_order, face_index,
                                                  if_no_face, progress, face_parsing)
            try:
                cond, uncond = id_tokens(pulid.encoder, conditions, fusion, id_mix)
            except ValueError as error:
                raise ValueError(f"PuLID Embed Face: {error}") from error
        progress.update(1)
        kept = [photo for photo, name in zip(photos, names, strict=True) if name not in skipped]
        recognition = np.stack([c.id_cond[0, :ARCFACE_DIM].float().cpu().numpy() for c in conditions])
        embedding = PulidEmbedding(cond.float().cpu(), uncond.float().cpu(), pulid.layout.base, recognition,
                                   face_analysis.name, skipped)
        size = kept[0].shape[:2]
        faces = to_image_batch([annotate(photo, c.face, size) for photo, c in zip(kept, conditions, strict=True)])
        crops = torch.cat([c.features.permute(0, 2, 3, 1).cpu() for c in conditions])
        if face_parsing is not None:
            return io.NodeOutput(embedding, faces, crops)
        logging.warning(NO_PARSING_WARNING)
        return io.NodeOutput(embedding, faces, crops, ui=ui.PreviewText(NO_PARSING_WARNING))


@contextmanager
def on_device(*modules: torch.nn.Module):
    """The modules on ComfyUI's torch device for the block, back where they were after it."""
    devices = [next(module.parameters()).device for module in modules]
    try:
        for module in modules:
            module.to(comfy.model_management.get_torch_device())
        yield
    finally:
        for module, device in zip(modules, devices, strict=True):
            module.to(device)


def face_conditions(photos, names, analyzer, eva_clip, order, index, if_no_face, progress, face_parsing=None):
    """The PuLID face condition of every reference with a face, and the names of those skipped. ``face_parsing``
    (a BiSeNet, optional) whitens the background, cloth, hat, ears and neck of each crop."""
    from ..pulid.embedding import face_condition
    from ..pulid.face_analysis import NoFaceError
    from ..pulid.face_parsing import parser

    parse = None if face_parsing is None else parser(face_parsing)
    conditions, skipped = [], []
    for photo, name in zip(photos, names, strict=True):
        comfy.model_management.throw_exception_if_processing_interrupted()
        try:
            conditions.append(face_condition(photo, analyzer, eva_clip, name, parse, order=order, index=index))
        except NoFaceError as error:
            if if_no_face == "error":
                raise NoFaceError(f"PuLID Embed Face: {error}. Use a photo where the face is visible, or set "
                                  "if_no_face to 'skip image'.") from error
            skipped.append(name)
        except ValueError as error:  # e.g. a 128-d recognizer where PuLID needs antelopev2's 512-d one
            raise ValueError(f"PuLID Embed Face: {error}") from error
        progress.update(1)
    if not conditions:
        raise NoFaceError(f"PuLID Embed Face: no face in any of the {len(photos)} reference image(s).")
    return conditions, skipped


class IDSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepIDSimilarity",
            display_name="ID Similarity",
            category="OneStep/PuLID",
            is_output_node=True,
            description="How much the generated faces look like the reference person: cosine between face "
                        "recognition embeddings of the largest face of each image and the reference identity "
                        "(mean over the reference photos). Images without a face are counted, not scored.",
            inputs=[
                FACE_ANALYSIS.Input("face_analysis", tooltip="From PuLID Load Face Analysis: antelopev2 as PuLID's "
                                                             "paper reports, or YuNet + SFace."),
                io.Image.Input("reference", tooltip="Photo(s) of the person."),
                io.Image.Input("images", tooltip="Generated images to score."),
            ],
            outputs=[
                io.Float.Output("mean_similarity", display_name="mean_similarity",
                                tooltip="Mean cosine over images with a face (NaN if none)."),
                io.String.Output("report", display_name="report",
                                 tooltip="JSON: per-image cosine (null: no face) and counts."),
            ],
        )

    @classmethod
    def execute(cls, face_analysis, reference, images) -> io.NodeOutput:
        import json

        from ..pulid.face_analysis import NoFaceError
        from ..pulid.face_crop import images_to_uint8
        from ..pulid.similarity import identity_similarities, reference_identity

        try:
            identity = reference_identity(face_analysis, images_to_uint8(reference))
        except NoFaceError as error:
            raise NoFaceError(f"ID Similarity: {error}: the reference must show the person's face.") from error
        similarities = identity_similarities(face_analysis, identity, images_to_uint8(images))
        scored = [s for s in similarities if s is not None]
        mean = float(np.mean(scored)) if scored else float("nan")
        report = {"recognizer": face_analysis.name, "per_image": similarities, "mean": mean if scored else None,
                  "images": len(similarities), "without_face": len(similarities) - len(scored)}
        text = json.dumps(report)
        return io.NodeOutput(mean, text, ui=ui.PreviewText(text))
