"""Image folders as calibration data: discovery, decoding through Pillow, torchvision-like presets.

- Discovery: every ``.png``, ``.jpg`` and ``.jpeg`` file (any letter case) under the folder,
  recursively; hidden files and folders (a leading ``.``) and other files are skipped; symlinked
  folders are not followed. An image name that is not a regular file (a FIFO, a device, a
  symlink loop or a dangling link) is an error naming it, never read; every image found is noted
  in the input ledger (``reludoctor.safeio``) at discovery, so no output can overwrite one. Order: sorted by path components, so class subfolders
  (``root/cat/1.png``) come folder by folder in the order torchvision's ``ImageFolder`` uses.
  Subfolders are only places to find images: no labels are derived from them.
- Decoding: Pillow, one batch at a time (a small thread pool decodes the batch's files; Pillow
  releases the GIL). No EXIF rotation (as torchvision's loader). Colour: converted to RGB, or to
  grayscale ("L", ITU-R 601-2 luma) when the model's input has 1 channel; an alpha channel is
  dropped (not composited); 16-bit grayscale PNGs keep their precision (scaled by 1/65535).
- Transforms, in this order, matching torchvision on PIL images: ``resize`` N as
  ``Resize(N)`` (shorter side to N, the longer ``int(N * long / short)``, bilinear with
  Pillow's antialiasing), ``center_crop`` N as ``CenterCrop(N)`` (offsets
  ``int(round((size - N) / 2))``; an image smaller than N is an error, not zero-padded),
  ``ToTensor`` (8-bit values / 255 as float32, [C, H, W]), then ``normalize`` ``imagenet``
  (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225) or ``none``.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reludoctor import safeio
from reludoctor.errors import DataError, UsageError, first_line

SUFFIXES = (".png", ".jpg", ".jpeg")
NORMALIZE = ("imagenet", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_WORKERS = 4
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Transform:
    channels: int = 3  # 1 (grayscale) or 3 (RGB)
    resize: int | None = None
    center_crop: int | None = None
    normalize: str = "none"

    def describe(self) -> str:
        parts = ["RGB" if self.channels == 3 else "grayscale"]
        if self.resize is not None:
            parts.append(f"resize {self.resize}")
        if self.center_crop is not None:
            parts.append(f"center-crop {self.center_crop}")
        parts.append(f"normalize {self.normalize}")
        return "images: " + ", ".join(parts)


def check_options(resize: int | None, center_crop: int | None, normalize: str | None) -> None:
    if resize is not None and resize < 1:
        raise UsageError(f"--resize {resize} must be at least 1")
    if center_crop is not None and center_crop < 1:
        raise UsageError(f"--center-crop {center_crop} must be at least 1")
    if normalize is not None and normalize not in NORMALIZE:
        raise UsageError(f"--normalize {normalize!r} is not one of {', '.join(NORMALIZE)}")


def discover(root: Path) -> list[str]:
    """The folder's PNG and JPEG files, recursively, as paths relative to ``root`` ("a/b.png"),
    in sorted path-component order. Each folder is listed once, in turn, and no sort key is
    built over the whole tree: the list of names (about 100 bytes a file) is all that grows."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder", "check the --data path")
    found: list[str] = []
    others = 0

    def walk(folder: str, prefix: str) -> None:
        nonlocal others
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")),
                                 key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{folder}: cannot read folder ({safeio.os_reason(exc)})") from exc
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, f"{prefix}{entry.name}/")
            elif os.path.splitext(entry.name)[1].lower() in SUFFIXES and _image_file(entry):
                found.append(prefix + entry.name)
                safeio.note_read(entry.path)
            else:
                others += 1

    walk(str(root), "")
    if not found:
        what = f" ({others} other file{'s' if others != 1 else ''})" if others else ""
        raise DataError(f"{root}: directory holds no PNG or JPEG images{what}",
                        "put .png/.jpg/.jpeg files in it; subfolders are searched too")
    return found


def _image_file(entry: os.DirEntry) -> bool:
    """An image-named entry: True for a regular file (symlinks followed), False for a symlink
    to a folder (not followed, as for folders); anything else is refused, naming it."""
    if entry.is_symlink():
        try:
            if entry.is_dir():
                return False
        except OSError:
            pass
    safeio.check_regular(entry.path, "image", DataError)
    return True


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: the shorter side becomes size."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def decode(path: Path, transform: Transform) -> np.ndarray:
    """One image file -> float32 [C, H, W] after the transform. DataError names the file."""
    from PIL import Image

    try:
        with safeio.open_regular(path, "image", DataError) as handle, Image.open(handle) as image:
            image.load()
            return _pixels(image, transform, path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever Pillow raises on a bad file: a data error
        detail = first_line(exc, type(exc).__name__)
        detail = detail.replace(f" {str(path)!r}", "").replace(f" {path}", "")  # named already
        detail = re.sub(r" <_io\.\w+ name=[^>]*>", "", detail)  # Pillow names the open handle
        raise DataError(f"{path}: cannot decode image ({detail})",
                        "re-save it as PNG or JPEG, or remove it from the folder") from exc


def _pixels(image: Any, transform: Transform, path: Path) -> np.ndarray:
    from PIL import Image

    if image.mode in _SIXTEEN_BIT:  # 16-bit grayscale PNG: keep the precision, as floats
        image = Image.fromarray(np.asarray(image, dtype=np.float32) / np.float32(65535.0))
        scale = None
    else:
        target = "L" if transform.channels == 1 else "RGB"
        if image.mode != target:
            image = image.convert(target)
        scale = np.float32(255.0)
    if transform.resize is not None:
        size = resized_size(image.width, image.height, transform.resize)
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
    if transform.center_crop is not None:
        crop = transform.center_crop
        if crop > image.width or crop > image.height:
            raise DataError(f"{path}: image is {image.height}x{image.width} (height x width)"
                            f"{' after --resize' if transform.resize is not None else ''}, "
                            f"smaller than --center-crop {crop}",
                            f"pass --resize {crop} or more as well")
        top = int(round((image.height - crop) / 2.0))
        left = int(round((image.width - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32)
    if scale is not None:
        array = array / scale
    if array.ndim == 2:
        array = array[None]
        if transform.channels == 3:
            array = np.repeat(array, 3, axis=0)
    else:
        array = array.transpose(2, 0, 1)
    if transform.normalize == "imagenet":
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
        array = (array - mean) / std
    return np.ascontiguousarray(array, dtype=np.float32)


class ImageFolder:
    """A folder's images as samples: ``read(indices)`` decodes those files into [n, C, H, W]."""

    def __init__(self, root: Path, files: Sequence[str], transform: Transform,
                 expected_hw: tuple[int, int] | None = None, workers: int | None = None):
        self.root = root
        self.files = list(files)
        self.transform = transform
        self.expected_hw = expected_hw
        self.workers = workers if workers is not None else min(MAX_WORKERS, os.cpu_count() or 1)
        self._first: tuple[Path, tuple[int, ...]] | None = None  # the first decoded image's shape

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: Any) -> np.ndarray:
        """Decode the files at ``indices`` (a slice or an index array), in that order."""
        names = self.files[indices] if isinstance(indices, slice) else [self.files[int(i)] for i in indices]
        paths = [self.root / name for name in names]
        transform = self.transform
        if not paths:  # e.g. a rank's empty shard
            shape = self._first[1] if self._first else (transform.channels, *(self.expected_hw or (0, 0)))
            return np.zeros((0, *shape), dtype=np.float32)
        if self.workers > 1 and len(paths) > 1:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(paths)),
                                    thread_name_prefix="reludoctor-decode") as pool:
                arrays = list(pool.map(lambda p: decode(p, transform), paths))
        else:
            arrays = [decode(p, transform) for p in paths]
        for path, array in zip(paths, arrays):
            self._check_size(path, array.shape)
        return np.stack(arrays)

    def _check_size(self, path: Path, shape: tuple[int, ...]) -> None:
        if self._first is None:
            if self.expected_hw is not None and tuple(shape[1:]) != self.expected_hw:
                h, w = self.expected_hw
                after = " after --resize/--center-crop" if self.transform.resize or \
                    self.transform.center_crop else ""
                raise DataError(
                    f"{path}: image is {shape[1]}x{shape[2]} (height x width){after} "
                    f"but the model expects {h}x{w}",
                    f"e.g. --resize {h} --center-crop {h}" if h == w
                    else "resize the images to the model's input size")
            self._first = (path, shape)
            return
        first, first_shape = self._first
        if shape != first_shape:
            hint = ("pass --center-crop N to make them equal" if self.transform.resize is not None
                    else "pass --resize N and --center-crop N to make them equal")
            raise DataError(f"{path}: image is {shape[1]}x{shape[2]} (height x width) but {first} "
                            f"is {first_shape[1]}x{first_shape[2]}: image sizes differ", hint)


def open_folder(root: Path, spec: Any, *, resize: int | None = None, center_crop: int | None = None,
                normalize: str | None = None, workers: int | None = None) -> ImageFolder:
    """An ImageFolder for a model input (an ``InputSpec``), its channels and size checked.

    Channels: 1 when the model's input is [N, 1, H, W], else 3 (RGB, also when the model does not
    declare its input shape). ``normalize`` None: ``imagenet`` for 3 channels, ``none`` for 1.
    """
    check_options(resize, center_crop, normalize)
    try:
        import PIL.Image  # noqa: F401 - a dependency, but say so clearly if it is missing
    except ImportError as exc:
        raise UsageError("reading a folder of images needs Pillow", "pip install Pillow") from exc
    files = discover(root)
    channels, expected_hw = _input_layout(root, spec)
    if normalize is None:
        normalize = "imagenet" if channels == 3 else "none"
    elif normalize == "imagenet" and channels != 3:
        raise UsageError(f"--normalize imagenet is for RGB inputs, but the model's input "
                         f"'{spec.name}' has {channels} channel", "use --normalize none")
    transform = Transform(channels=channels, resize=resize, center_crop=center_crop,
                          normalize=normalize)
    return ImageFolder(root, files, transform, expected_hw, workers)


def _input_layout(root: Path, spec: Any) -> tuple[int, tuple[int, int] | None]:
    if spec.dtype and not spec.dtype.startswith(("float", "bfloat")):
        raise DataError(f"{root}: the model's input '{spec.name}' is {spec.dtype}, but an image "
                        "folder gives float32 pixels", "pass a .npy of the model's input")
    shape = spec.shape
    if shape is None:
        return 3, None
    if len(shape) != 4:
        shown = ", ".join("N" if d is None else str(d) for d in shape)
        raise DataError(f"{root}: the model's input '{spec.name}' is [{shown}], but an image folder "
                        "gives images [N, C, H, W]", "pass a .npy of the model's input shape")
    channels = shape[1]
    if channels is not None and channels not in (1, 3):
        raise DataError(f"{root}: the model's input '{spec.name}' has {channels} channels, but "
                        "image folders give 1 (grayscale) or 3 (RGB)",
                        "pass a .npy of the model's input shape")
    height, width = shape[2], shape[3]
    expected = (int(height), int(width)) if height is not None and width is not None else None
    return int(channels) if channels is not None else 3, expected
