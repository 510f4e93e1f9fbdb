"""Images the trainer shows: preview grids of samples and the training curve, drawn with PIL."""

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..distill.fmnist import image_grid

CURVE_SIZE = (640, 320)
CURVE_COLOURS = {"generator": (220, 60, 40), "fake_score": (40, 100, 220)}


def grayscale_grid(pixels: torch.Tensor, scale: int = 3) -> Image.Image:
    """A grid of [N, C, H, W] samples in [-1, 1] (first channel), upscaled for the preview pane."""
    image = Image.fromarray(image_grid(pixels[:, :1], columns=math.ceil(math.sqrt(pixels.shape[0]))), mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST).convert("RGB")


def training_curve(history: list[dict], first_step: int = 1) -> torch.Tensor:
    """Generator and fake-score losses against the step, as a ComfyUI IMAGE [1, H, W, 3]."""
    width, height = CURVE_SIZE
    image = Image.new("RGB", CURVE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    margin = 30
    draw.rectangle([margin, margin, width - margin, height - margin], outline=(160, 160, 160))
    for row, (name, colour) in enumerate(CURVE_COLOURS.items()):
        values = [h[name] for h in history if math.isfinite(h.get(name, math.nan))]
        draw.text((margin + 5, 5 + 12 * row), f"{name} loss", fill=colour)
        if len(values) < 2:
            continue
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        points = [
            (margin + (width - 2 * margin) * i / (len(values) - 1),
             height - margin - (height - 2 * margin) * (v - low) / span)
            for i, v in enumerate(values)
        ]
        draw.line(points, fill=colour, width=1)
        draw.text((width - margin - 150, 5 + 12 * row), f"{low:.3g} .. {high:.3g}", fill=colour)
    draw.text((margin, height - margin + 5), f"step {first_step}", fill=(0, 0, 0))
    draw.text((width - margin - 60, height - margin + 5), f"step {first_step + len(history) - 1}", fill=(0, 0, 0))
    return image_tensor(image)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE: [1, H, W, 3] floats in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]
