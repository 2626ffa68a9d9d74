"""dataset=image_folder: torchvision's ImageFolder layout on disk, decoded with Pillow (no torchvision needed).

    <root>/train/<class>/**/*.jpg|png|...   training images, one folder per class (sorted names = labels)
    <root>/val/<class>/...                  validation images (the same class names)
    <root>/test/<class>/...                 test images; optional: without it the test split is val/

Files are listed once per rank, in torchvision's order (classes sorted, then each class folder walked
sorted), and kept as one numpy array of relative paths: no Python object per file for the DataLoader
workers' copy-on-write pages to duplicate.
"""

from __future__ import annotations

import os

import numpy as np

from ddtrain.data.augment import Transform, apply_pil, draft_size
from ddtrain.errors import UserError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
LAYOUT = "<root>/train/<class>/*.jpg|png and <root>/val/<class>/... (torchvision ImageFolder layout)"
MODES = {1: "L", 3: "RGB"}


def find_classes(folder: str, root: str) -> list[str]:
    """Sorted class folder names of one split folder; UserError when the folder or its classes are missing."""
    if not os.path.isdir(folder):
        raise UserError(f"dataset=image_folder: {folder} is not a folder; dataset.root={root} must hold {LAYOUT}")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise UserError(f"dataset=image_folder: {folder} has no class folders; put each class's images in "
                        f"{folder}/<class>/ ({LAYOUT})")
    return classes


class ImageFiles:
    """The labelled image files of one split: relative paths, labels, and how to read one as a Pillow image."""

    def __init__(self, folder: str, class_to_idx: dict[str, int], channels: int, root: str):
        self.folder, self.root, self.mode = folder, root, MODES[channels]
        paths, labels = [], []
        for name in sorted(class_to_idx):
            class_dir = os.path.join(folder, name)
            found = [os.path.relpath(os.path.join(d, f), folder)
                     for d, _, files in sorted(os.walk(class_dir, followlinks=True))
                     for f in sorted(files) if f.lower().endswith(EXTENSIONS)]
            if not found:
                raise UserError(f"dataset=image_folder: class folder {class_dir} holds no images "
                                f"({', '.join(EXTENSIONS)}); add its images or remove the folder")
            paths += found
            labels += [class_to_idx[name]] * len(found)
        self.paths = np.array([p.encode() for p in paths])  # one fixed-width byte array, not a list of str
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        """Full path of image i."""
        return os.path.join(self.folder, self.paths[i].decode())

    def read(self, i: int, transform: Transform, g) -> np.ndarray:
        """Image i decoded and transformed (generator g draws the random choices): (H, W, C) uint8.

        A JPEG whose first step shrinks it is decoded at a reduced scale (Pillow's draft mode: the
        DCT does the first halvings). Raises UserError naming the file when it does not decode.
        """
        path = self.path(i)
        try:
            img = _open(path)
            width, height = img.size
            steps = transform.plan(width, height, g)
            size = draft_size(steps, width, height)
            if size is not None:
                img.draft(self.mode, size)
            img.load()
            sx, sy = img.size[0] / width, img.size[1] / height
            img = img if img.mode == self.mode else img.convert(self.mode)
        except Exception as exc:  # Pillow raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
            text = str(exc).strip().split("\n")[0] or type(exc).__name__
            raise UserError(f"dataset=image_folder: {path} does not decode as an image ({text}); replace or "
                            f"delete it (under dataset.root={self.root})") from exc
        img = apply_pil(img, steps, sx, sy)
        # tobytes + frombuffer: what np.asarray does through __array_interface__, with less Python on the way
        return np.frombuffer(img.tobytes(), np.uint8).reshape(img.size[1], img.size[0], len(self.mode))


def _open(path: str):
    """A Pillow image of the file, not yet decoded: read in one call, its format taken from the extension.

    Image.open's generic path (buffered reads, asking each plugin) costs as much as decoding a small
    PNG; a file whose extension lies is still identified by Image.open.
    """
    import io

    from PIL import Image, JpegImagePlugin, PngImagePlugin

    with open(path, "rb") as f:
        data = f.read()
    plugin = {".png": PngImagePlugin.PngImageFile, ".jpg": JpegImagePlugin.JpegImageFile,
              ".jpeg": JpegImagePlugin.JpegImageFile}.get(os.path.splitext(path)[1].lower())
    if plugin is not None:
        try:
            return plugin(io.BytesIO(data))
        except SyntaxError:  # Pillow's "not a PNG/JPEG file": let it identify the format
            pass
    return Image.open(io.BytesIO(data))


def scan(root: str, channels: int) -> tuple[dict[str, ImageFiles], list[str]]:
    """The splits of an image folder ({"train", "val", "test"}, test = val/ without test/) and the class names."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise UserError(f"dataset=image_folder: dataset.root={root} is not a folder; point it at a folder "
                        f"holding {LAYOUT}")
    if channels not in MODES:
        raise UserError(f"dataset.channels={channels} must be 1 (grayscale) or 3 (RGB)")
    classes = find_classes(os.path.join(root, "train"), root)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    splits = {"train": ImageFiles(os.path.join(root, "train"), class_to_idx, channels, root)}
    for split in ("val", "test"):
        folder = os.path.join(root, split)
        if split == "test" and not os.path.exists(folder):
            splits["test"] = splits["val"]
            continue
        unknown = sorted(set(find_classes(folder, root)) - set(classes))
        if unknown:
            raise UserError(f"dataset=image_folder: {folder} has class folders that train/ lacks: "
                            f"{', '.join(unknown[:5])}; every class of {split}/ needs training images")
        present = {c: i for c, i in class_to_idx.items() if os.path.isdir(os.path.join(folder, c))}
        splits[split] = ImageFiles(folder, present, channels, root)
    return splits, classes
