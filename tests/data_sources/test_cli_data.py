"""The command line over image folders and samples: results, and every error path (exit 2, one
line on stderr naming the file or option, no traceback, inputs untouched)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasource_kit import DIGITS_CNN, DIGITS_MLP, DIGITS_NPY, folder_digest, random_rgb, write_image


def _gray_folder(tmp: Path, sizes=((8, 8),) * 3) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp / "imgs"
    for index, (h, w) in enumerate(sizes):
        write_image(folder / f"{index}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
    return folder


def _empty(tmp):  # noqa: ANN001, ANN202
    (tmp / "imgs" / "sub").mkdir(parents=True)
    (tmp / "imgs" / "sub" / "notes.txt").write_text("no images here")
    return ["--data", tmp / "imgs"], ["imgs", "no PNG or JPEG images"]


def _undecodable(tmp):  # noqa: ANN001, ANN202
    folder = _gray_folder(tmp)
    (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return ["--data", folder], ["1.png", "cannot decode image"]


def _jpeg_truncated(tmp):  # noqa: ANN001, ANN202
    folder = _gray_folder(tmp)
    good = write_image(tmp / "x.jpg", random_rgb(np.random.default_rng(1), 8, 8))
    (folder / "2.jpg").write_bytes(good.read_bytes()[:100])
    return ["--data", folder], ["2.jpg", "cannot decode image"]


def _mixed_sizes(tmp):  # noqa: ANN001, ANN202
    folder = _gray_folder(tmp, ((8, 8), (8, 8), (10, 8)))
    return ["--data", folder], ["2.png", "10x8", "0.png", "differ", "--resize"]


def _mixed_after_resize(tmp):  # noqa: ANN001, ANN202
    folder = _gray_folder(tmp, ((8, 8), (8, 12)))
    return ["--data", folder, "--resize", "8"], ["1.png", "8x12", "--center-crop"]


def _crop_too_large(tmp):  # noqa: ANN001, ANN202
    return ["--data", _gray_folder(tmp), "--center-crop", "10"], ["0.png", "smaller than --center-crop 10"]


def _wrong_size_for_model(tmp):  # noqa: ANN001, ANN202
    return ["--data", _gray_folder(tmp, ((9, 9),) * 2)], ["0.png", "9x9", "model expects 8x8", "--resize 8 --center-crop 8"]


def _imagenet_on_gray(tmp):  # noqa: ANN001, ANN202
    return ["--data", _gray_folder(tmp), "--normalize", "imagenet"], ["--normalize imagenet", "--normalize none"]


def _bad_normalize(tmp):  # noqa: ANN001, ANN202
    return ["--data", _gray_folder(tmp), "--normalize", "std"], ["--normalize 'std'", "imagenet, none"]


def _resize_on_npy(tmp):  # noqa: ANN001, ANN202
    return ["--data", DIGITS_NPY, "--resize", "8"], ["--resize", "folder of images"]


def _resize_zero(tmp):  # noqa: ANN001, ANN202
    return ["--data", _gray_folder(tmp), "--resize", "0"], ["--resize 0"]


def _sample_zero(tmp):  # noqa: ANN001, ANN202
    return ["--data", DIGITS_NPY, "--sample", "0"], ["--sample 0"]


def _negative_seed(tmp):  # noqa: ANN001, ANN202
    return ["--data", DIGITS_NPY, "--sample", "5", "--seed", "-1"], ["--seed -1"]


def _sample_synthetic(tmp):  # noqa: ANN001, ANN202
    return ["--sample", "5"], ["--sample", "--data"]


def _mlp_with_images(tmp):  # noqa: ANN001, ANN202
    return ["--data", _gray_folder(tmp)], ["imgs", "[N, 64]"]


CASES = {
    "empty-folder": _empty, "undecodable-png": _undecodable, "truncated-jpeg": _jpeg_truncated,
    "mixed-sizes": _mixed_sizes, "mixed-after-resize": _mixed_after_resize,
    "crop-too-large": _crop_too_large, "wrong-size-for-model": _wrong_size_for_model,
    "imagenet-on-grayscale": _imagenet_on_gray, "bad-normalize": _bad_normalize,
    "resize-on-npy": _resize_on_npy, "resize-zero": _resize_zero, "sample-zero": _sample_zero,
    "negative-seed": _negative_seed, "sample-synthetic": _sample_synthetic,
    "mlp-with-images": _mlp_with_images,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_one_line_exit_2(cli, tmp_path: Path, case: str) -> None:
    args, mentions = CASES[case](tmp_path)
    model = DIGITS_MLP if case == "mlp-with-images" else DIGITS_CNN
    inputs = [Path(a) for a in args if isinstance(a, Path)] + [model]
    before = {str(p): folder_digest(p) for p in inputs}
    result = cli(model, *args, "--device", "cpu", "--quiet")
    stderr = result.stderr
    assert "Traceback" not in result.stdout + stderr, stderr
    assert result.exit_code == 2, f"exit {result.exit_code}: {stderr}"
    assert result.stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reludoctor: error:"), stderr
    for text in mentions:
        assert str(text) in lines[0], f"{text!r} not in: {lines[0]}"
    assert {str(p): folder_digest(p) for p in inputs} == before  # nothing modified


def test_scan_an_image_folder_with_a_sample(cli, digits_folder) -> None:
    folder, _, _ = digits_folder
    before = folder_digest(folder)
    result = cli(DIGITS_CNN, "--data", folder, "--sample", "50", "--seed", "3", "--limit", "300",
                 "--json", "-", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["calibration"]["samples"] == 50
    assert report["calibration"]["source"] == (f"{folder} (images: grayscale, normalize none; "
                                               "random sample of 50 of 300, seed 3)")
    assert folder_digest(folder) == before


def test_sample_larger_than_the_data_warns(cli) -> None:
    result = cli(DIGITS_CNN, "--data", DIGITS_NPY, "--sample", "5000", "--json", "-",
                 "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["calibration"]["samples"] == 360
    assert "warning: --sample 5000 is more than the 360 samples of the data: using all 360" in \
        " ".join(result.stderr.split())


def test_help_lists_the_options(cli) -> None:
    result = cli("--help")
    text = " ".join(result.stdout.split())
    for option in ("--sample", "--seed", "--resize", "--center-crop", "--normalize", "PNG/JPEG"):
        assert option in text
