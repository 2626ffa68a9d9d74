"""Image folders written by tests: torchvision's ImageFolder layout, PNG and JPEG files, with learnable classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def class_image(label: int, index: int, size: tuple[int, int], channels: int) -> np.ndarray:
    """A (H, W[, C]) uint8 image whose class shows in its brightness pattern, plus a little per-image noise."""
    h, w = size[1], size[0]
    rng = np.random.default_rng(1000 * label + index)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin((label + 1) * (xx + 2 * yy) / max(w, h) * np.pi)
    img = np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)
    return img if channels == 1 else np.stack([img, np.roll(img, label, axis=1), 255 - img], axis=2)


def write_image_folder(root: Path, per_class: dict[str, int], classes: int = 3, size=(28, 28), channels: int = 1,
                       sizes_vary: bool = False) -> Path:
    """root/<split>/c<k>/<i>.png|jpg for each split and count; every third file a JPEG, the others PNG."""
    from PIL import Image

    for split, count in per_class.items():
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = (size[0] + (i % 3) * 4, size[1] + (i % 2) * 6) if sizes_vary else size
                pixels = class_image(label, i + 100 * (split != "train"), shape, channels)
                ext = "jpg" if i % 3 == 2 else "png"
                Image.fromarray(pixels).save(folder / f"{i:04d}.{ext}", quality=95)
    return root
