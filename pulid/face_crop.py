"""The PuLID face crop: aligned 512 crop, parsing-based whitening, grayscale, 336 px, CLIP normalisation.

Follows the official ``pulid/pipeline*.py`` (``get_id_embedding``): facexlib's FFHQ 5-point alignment
at 512, BiSeNet parsing whitening background/cloth/hat/ears/neck, ``to_gray``, bicubic resize to the
EVA-CLIP size, OpenAI CLIP mean/std.
"""

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CROP_SIZE = 512
# facexlib FaceRestoreHelper's 5-point template for 512x512 FFHQ-aligned faces
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
CROP_BORDER_RGB = (132, 133, 135)  # facexlib's gray border, BGR (135, 133, 132)
# BiSeNet (CelebAMask-HQ) classes turned white: background 0, ears 7 8, earring 9, neck 14 15, cloth 16, hat 18
WHITENED_CLASSES = (0, 7, 8, 9, 14, 15, 16, 18)
PARSING_MEAN = (0.485, 0.456, 0.406)  # BiSeNet input normalisation (ImageNet)
PARSING_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_DATASET_MEAN/STD, as the official pipelines use
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def images_to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """A batch of float images [B, H, W, C] in [0, 1] (a ComfyUI IMAGE) as RGB uint8 arrays; a gray image (C = 1)
    is repeated to 3 channels, an alpha channel dropped."""
    pixels = (images[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels.repeat(3, axis=-1)
    return list(pixels)


def resize_long_edge(image: np.ndarray, max_edge: int = 1024) -> np.ndarray:
    """Shrink so that the long edge is at most ``max_edge`` (official ``resize_numpy_image_long``: truncated
    sizes, Lanczos)."""
    scale = max_edge / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (int(image.shape[1] * scale), int(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The face warped by the similarity transform taking its 5 landmarks to the FFHQ template (LMEDS fit, gray
    border: facexlib ``align_warp_face``)."""
    template = FFHQ_TEMPLATE_512 * (size / CROP_SIZE)
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), template, method=cv2.LMEDS)
    return cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=CROP_BORDER_RGB)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def normalize(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """Per-channel (x - mean) / std."""
    return (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]


def whitened_region(parsing: torch.Tensor) -> torch.Tensor:
    """Where the crop turns white, [B, 1, H, W] bool, from BiSeNet logits [B, 19, H, W] or labels [B, (1,) H, W]."""
    if parsing.is_floating_point():
        labels = parsing.argmax(dim=1, keepdim=True)
    else:
        labels = parsing.reshape(parsing.shape[0], 1, *parsing.shape[-2:])
    return torch.isin(labels, labels.new_tensor(WHITENED_CLASSES))


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luma 0.299 R + 0.587 G + 0.114 B repeated on 3 channels (official ``to_gray``)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).repeat(1, 3, 1, 1)


def face_features_image(face: torch.Tensor, parsing: torch.Tensor | None = None) -> torch.Tensor:
    """The gray face with background, cloth, hat, ears and neck whitened when a parsing map is given."""
    gray = to_gray(face)
    if parsing is None:
        return gray
    return torch.where(whitened_region(parsing), torch.ones_like(gray), gray)


def clip_pixels(x: torch.Tensor, size: int = 336) -> torch.Tensor:
    """Bicubic resize to ``size`` (no antialias: torchvision 0.15's tensor default, the official pin), CLIP mean/std."""
    resized = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return normalize(resized, CLIP_MEAN, CLIP_STD)
