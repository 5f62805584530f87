"""Image folders: discovery order, decoding and presets against independent oracles, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasource_kit import Image, random_rgb, write_image

from reludoctor.data import images
from reludoctor.data.binding import InputSpec
from reludoctor.data.calibration import load_calibration
from reludoctor.errors import DataError, UsageError

RGB = InputSpec("x", (None, 3, None, None), "float32")
GRAY = InputSpec("x", (None, 1, None, None), "float32")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def _all(calibration, batch_size=4) -> np.ndarray:
    return np.concatenate([b[0] for b in calibration.batches(batch_size)])


# --- discovery -----------------------------------------------------------------------------


def test_discovery_is_recursive_sorted_and_skips_other_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["b/2.png", "a/10.JPG", "a/9.jpeg", "a b/1.png", "top.png", "a/sub/0.png"]
    for name in names:
        write_image(tmp_path / name, random_rgb(rng, 4, 4))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "labels.csv").write_text("x")
    write_image(tmp_path / ".hidden" / "h.png", random_rgb(rng, 4, 4))
    write_image(tmp_path / "a" / ".h.png", random_rgb(rng, 4, 4))
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)  # not followed
    found = images.discover(tmp_path)
    # Path components compared in turn: folder "a" before "a b" (as ImageFolder's class order),
    # names as strings ("10.JPG" < "9.jpeg"), any letter case of the suffix.
    assert found == ["a/10.JPG", "a/9.jpeg", "a/sub/0.png", "a b/1.png", "b/2.png", "top.png"]


def test_order_is_deterministic_and_the_same_as_the_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    expected = {}
    for index in rng.permutation(12):  # created in a random order
        pixels = np.full((3, 3, 3), index * 20, dtype=np.uint8)
        write_image(tmp_path / f"{index % 3}" / f"img{index:02d}.png", pixels)
        expected[f"{index % 3}/img{index:02d}.png"] = index * 20 / 255
    order = sorted(expected, key=lambda name: tuple(name.split("/")))
    values = np.array([expected[name] for name in order], dtype=np.float32)
    for _ in range(2):
        data = _all(load_calibration(tmp_path, [RGB], normalize="none"), batch_size=5)
        np.testing.assert_array_equal(data[:, 0, 0, 0], values)


# --- decoding against oracles ----------------------------------------------------------------


def test_crop_and_normalize_match_a_hand_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    sizes = [(9, 12), (12, 9), (7, 7), (10, 11)]
    raw = [random_rgb(rng, h, w) for h, w in sizes]
    for index, pixels in enumerate(raw):
        write_image(tmp_path / f"{index}.png", pixels)
    data = _all(load_calibration(tmp_path, [RGB], center_crop=6, normalize="imagenet"), 3)
    assert data.dtype == np.float32 and data.shape == (4, 3, 6, 6)
    for got, pixels in zip(data, raw):
        h, w = pixels.shape[:2]
        top, left = int(round((h - 6) / 2)), int(round((w - 6) / 2))
        chw = pixels[top:top + 6, left:left + 6].transpose(2, 0, 1).astype(np.float32) / 255
        np.testing.assert_allclose(got, (chw - MEAN) / STD, rtol=0, atol=1e-6)


def test_resize_matches_pillow_by_hand(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for index, (h, w) in enumerate([(20, 31), (33, 17)]):
        write_image(tmp_path / f"{index}.png", random_rgb(rng, h, w))
    data = _all(load_calibration(tmp_path, [RGB], resize=10, center_crop=10, normalize="none"))
    for got, path in zip(data, sorted(tmp_path.glob("*.png"))):
        with Image.open(path) as image:
            w, h = image.size
            size = (10, int(10 * h / w)) if w <= h else (int(10 * w / h), 10)
            resized = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32)
        rh, rw = resized.shape[:2]
        top, left = int(round((rh - 10) / 2)), int(round((rw - 10) / 2))
        expected = resized[top:top + 10, left:left + 10].transpose(2, 0, 1) / 255
        np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_presets_match_torchvision(tmp_path: Path, suffix: str) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(4)
    for index, (h, w) in enumerate([(40, 57), (61, 45), (48, 48), (37, 52)]):
        write_image(tmp_path / f"{index}{suffix}", random_rgb(rng, h, w))
    pipeline = transforms.Compose([
        transforms.Resize(32), transforms.CenterCrop(28), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    expected = []
    for path in sorted(tmp_path.iterdir()):
        with Image.open(path) as image:
            expected.append(pipeline(image.convert("RGB")).numpy())
    data = _all(load_calibration(tmp_path, [RGB], resize=32, center_crop=28))  # default imagenet
    np.testing.assert_allclose(data, np.stack(expected), rtol=0, atol=1e-5)


def test_grayscale_rgba_and_16_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 5, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (5, 5), dtype=np.uint16)
    write_image(tmp_path / "a_gray.png", gray)
    write_image(tmp_path / "b_rgba.png", rgba)
    Image.fromarray(deep).save(tmp_path / "c_deep.png")  # 16-bit grayscale PNG
    rgb = _all(load_calibration(tmp_path, [RGB], normalize="none"))
    np.testing.assert_array_equal(rgb[0], np.repeat(gray[None] / np.float32(255), 3, axis=0))
    np.testing.assert_array_equal(rgb[1], rgba[..., :3].transpose(2, 0, 1) / np.float32(255))
    np.testing.assert_allclose(rgb[2], np.repeat(deep[None] / 65535.0, 3, axis=0), atol=1e-7)
    one = _all(load_calibration(tmp_path, [GRAY]))  # default for 1 channel: normalize none
    assert one.shape == (3, 1, 5, 5)
    np.testing.assert_array_equal(one[0, 0], gray / np.float32(255))
    luma = np.asarray(Image.fromarray(rgba[..., :3]).convert("L"), dtype=np.float32) / 255
    np.testing.assert_array_equal(one[1, 0], luma)
    np.testing.assert_allclose(one[2, 0], deep / 65535.0, atol=1e-7)


def test_model_without_a_declared_shape_gets_rgb_imagenet(tmp_path: Path) -> None:
    write_image(tmp_path / "0.png", np.full((4, 4), 255, dtype=np.uint8))
    calibration = load_calibration(tmp_path, [InputSpec("x", None, None)])
    assert "RGB" in calibration.source and "imagenet" in calibration.source
    np.testing.assert_allclose(_all(calibration)[0, :, 0, 0], ((1 - MEAN) / STD)[:, 0, 0], atol=1e-6)


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_decodes_one_batch_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     workers: int) -> None:
    rng = np.random.default_rng(6)
    for index in range(11):
        write_image(tmp_path / f"{index:02d}.png", random_rgb(rng, 6, 6))
    decoded = []
    original = images.decode

    def counting(path, transform):  # noqa: ANN001, ANN202
        decoded.append(path)
        return original(path, transform)

    monkeypatch.setattr(images, "decode", counting)
    calibration = load_calibration(tmp_path, [RGB], image_workers=workers)
    assert decoded == []  # opening the folder decodes nothing
    batches = calibration.batches(4)
    seen = []
    for expected_rows in (4, 4, 3):
        batch = next(batches)
        seen.append(batch[0])
        assert batch[0].shape == (expected_rows, 3, 6, 6)
        assert len(decoded) == sum(b.shape[0] for b in seen)  # never ahead of the batch
    assert [p.name for p in decoded] == [f"{i:02d}.png" for i in range(11)]
    assert calibration.samples == 11


def test_threads_give_the_same_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for index in range(9):
        write_image(tmp_path / f"{index}.jpg", random_rgb(rng, 13, 10))
    one = _all(load_calibration(tmp_path, [RGB], resize=8, center_crop=8, image_workers=1))
    many = _all(load_calibration(tmp_path, [RGB], resize=8, center_crop=8, image_workers=4))
    np.testing.assert_array_equal(one, many)


def test_batches_are_private_copies(tmp_path: Path) -> None:
    write_image(tmp_path / "0.png", np.zeros((3, 3, 3), dtype=np.uint8))
    calibration = load_calibration(tmp_path, [RGB], normalize="none")
    first = next(calibration.batches(1))[0]
    first += 1
    assert float(next(calibration.batches(1))[0].max()) == 0.0


# --- errors ------------------------------------------------------------------------------------


def test_errors_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    write_image(tmp_path / "a.png", random_rgb(rng, 8, 8))
    write_image(tmp_path / "b.png", random_rgb(rng, 8, 9))
    with pytest.raises(DataError, match=r"b\.png.*8x9.*a\.png.*8x8.*differ"):
        _all(load_calibration(tmp_path, [RGB]))
    with pytest.raises(DataError, match=r"a\.png.*smaller than --center-crop 9"):
        _all(load_calibration(tmp_path, [RGB], center_crop=9))
    with pytest.raises(DataError, match=r"a\.png.*8x8.*model expects 16x16"):
        _all(load_calibration(tmp_path, [InputSpec("x", (None, 3, 16, 16), "float32")]))
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"c\.png: cannot decode image \(cannot identify image file\)"):
        _all(load_calibration(tmp_path, [RGB], center_crop=8))
    (tmp_path / "c.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])  # truncated
    with pytest.raises(DataError, match=r"c\.png: cannot decode image"):
        _all(load_calibration(tmp_path, [RGB], center_crop=8))


def test_refusals_before_decoding(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"directory holds no PNG or JPEG images.*1 other file"):
        load_calibration(empty, [RGB])
    with pytest.raises(UsageError, match="--normalize imagenet is for RGB"):
        load_calibration(tmp_path, [GRAY], normalize="imagenet")
    with pytest.raises(UsageError, match="--normalize 'std'"):
        load_calibration(tmp_path, [RGB], normalize="std")
    with pytest.raises(UsageError, match="--resize 0"):
        load_calibration(tmp_path, [RGB], resize=0)
    with pytest.raises(DataError, match=r"\[N, 64\].*images"):
        load_calibration(tmp_path, [InputSpec("x", (None, 64), "float32")])
    with pytest.raises(DataError, match="4 channels"):
        load_calibration(tmp_path, [InputSpec("x", (None, 4, 8, 8), "float32")])
    with pytest.raises(DataError, match="int64"):
        load_calibration(tmp_path, [InputSpec("x", (None, 3, 8, 8), "int64")])
    with pytest.raises(DataError, match="one input, the model takes 2"):
        load_calibration(tmp_path, [RGB, InputSpec("y", None, None)])
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(UsageError, match="--resize, --center-crop: only for a folder"):
        load_calibration(tmp_path / "x.npy", [RGB], resize=4, center_crop=4)
