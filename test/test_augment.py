"""Training image augmentation (train/augment.py): shapes, ranges, seeding, refusal of bad values,
and the tokenizer CLI flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avdp_ros.train.augment import AUGMENT_PRESETS, AugmentConfig, augment


def _images(b: int = 8, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, size, size, generator=g) * 0.6 + 0.2  # away from the clamp


def test_off_is_the_identity_and_shapes_are_kept():
    x = _images()
    assert augment(x, AUGMENT_PRESETS["none"], torch.Generator()) is x
    y = augment(x, AUGMENT_PRESETS["default"], torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype and 0.0 <= y.min() and y.max() <= 1.0
    assert not torch.equal(y, x)
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        augment(x[:, :2], AUGMENT_PRESETS["default"], torch.Generator())


def test_same_seed_same_augmentation():
    x, cfg = _images(), AUGMENT_PRESETS["default"]
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    c = augment(x, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_brightness_stays_in_its_range():
    x = _images(64)
    y = augment(x, AugmentConfig(brightness=0.2), torch.Generator().manual_seed(0))
    ratio = (y / x).flatten(1)  # one factor per image
    assert torch.allclose(ratio.min(1).values, ratio.max(1).values, atol=1e-5)
    assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.2 + 1e-5 and ratio.std() > 0.05


def test_hue_and_saturation_keep_luminance():
    x = _images(16)
    y = augment(x, AugmentConfig(hue=0.5, saturation=0.5), torch.Generator().manual_seed(0))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    unclamped = (y > 0.0) & (y < 1.0)
    mask = unclamped.all(1, keepdim=True)
    assert torch.allclose(((y * luma).sum(1, keepdim=True))[mask], ((x * luma).sum(1, keepdim=True))[mask], atol=1e-4)


def test_shift_translates_within_its_range():
    x = torch.zeros(32, 3, 16, 16)
    x[:, :, 8, 8] = 1.0  # one bright pixel
    y = augment(x, AugmentConfig(shift=3), torch.Generator().manual_seed(0))
    pos = [divmod(int(img[0].argmax()), 16) for img in y]
    offsets = {(r - 8, c - 8) for r, c in pos}
    assert all(abs(dr) <= 3 and abs(dc) <= 3 for dr, dc in offsets) and len(offsets) > 5


def test_white_balance_tints_red_against_blue_within_its_range():
    x = torch.full((64, 3, 8, 8), 0.5)
    y = augment(x, AugmentConfig(white_balance=0.3), torch.Generator().manual_seed(0))
    red, green, blue = (y[:, c].mean((1, 2)) / 0.5 for c in range(3))
    assert torch.allclose(green, torch.ones(64)) and torch.allclose(red - 1, 1 - blue, atol=1e-6)
    assert red.min() >= 0.7 - 1e-6 and red.max() <= 1.3 + 1e-6 and red.std() > 0.1


def test_rotation_and_zoom_move_a_point_about_the_centre_within_their_range():
    x = torch.zeros(64, 3, 33, 33)
    x[:, :, 16, 28] = 1.0  # 12 px right of the centre pixel
    y = augment(x, AugmentConfig(rotate=10.0, scale=0.1), torch.Generator().manual_seed(0))
    mass = y[:, 0]
    rows, cols = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    r = (mass * rows).sum((1, 2)) / mass.sum((1, 2)) - 16
    c = (mass * cols).sum((1, 2)) / mass.sum((1, 2)) - 16
    angle = torch.rad2deg(torch.atan2(r, c)).abs()
    radius = torch.hypot(r, c) / 12
    assert angle.max() <= 10.5 and angle.max() > 5  # turned, by at most the range (plus a pixel's blur)
    assert radius.min() >= 0.88 and radius.max() <= 1.12 and radius.std() > 0.02


def test_a_ramp_brightens_one_side_and_darkens_the_other_within_its_range():
    x = torch.full((64, 3, 33, 33), 0.5)
    y = augment(x, AugmentConfig(ramp=0.4), torch.Generator().manual_seed(0)) / 0.5
    assert y.min() >= 0.6 - 1e-6 and y.max() <= 1.4 + 1e-6
    assert torch.allclose(y[:, :, 16, 16], torch.ones(64, 3), atol=1e-5)  # the centre keeps its light
    assert torch.allclose(y[:, 0], y[:, 2])  # no colour cast
    span = y[:, 0].amax((1, 2)) - y[:, 0].amin((1, 2))
    assert span.max() > 0.5 and span.std() > 0.1  # some steep, some flat
    # opposite corners move opposite ways around the centre
    assert torch.allclose(y[:, 0, 0, 0] - 1, 1 - y[:, 0, -1, -1], atol=1e-5)


def test_the_default_preset_draws_as_before_the_new_fields():
    """New fields draw only when on, so latent views cached with `default` stay valid: the sum was
    taken from the code before white balance, rotation and zoom existed (revision b08b6a2)."""
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    y = augment(x, AUGMENT_PRESETS["default"], torch.Generator().manual_seed(3))
    assert y.sum().item() == pytest.approx(2713.7705078125, abs=1e-3)
    # and `invariant` (the shipped encoder's) as before the ramp (revision e8fa596)
    y = augment(x, AUGMENT_PRESETS["invariant"], torch.Generator().manual_seed(3))
    assert y.sum().item() == pytest.approx(2496.5537109375, abs=1e-3)


@pytest.mark.parametrize("kwargs, field", [({"brightness": 1.5}, "brightness"), ({"contrast": -0.1}, "contrast"),
                                           ({"saturation": float("nan")}, "saturation"), ({"hue": 0.7}, "hue"),
                                           ({"shift": 2.5}, "shift"), ({"shift": 100}, "shift"),
                                           ({"white_balance": 1.0}, "white_balance"), ({"rotate": 90}, "rotate"),
                                           ({"scale": -0.1}, "scale"), ({"ramp": 1.0}, "ramp")])
def test_bad_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"AugmentConfig.{field}"):
        AugmentConfig(**kwargs)


def test_tokenizer_cli_trains_with_augmentation_and_records_it(tmp_path: Path):
    from test_tokenizer import write_synthetic_dataset

    from avdp_ros.model.checkpoint import load_checkpoint
    from avdp_ros.tools.train import main_tokenizer
    from avdp_ros.train import engine

    data = write_synthetic_dataset(tmp_path / "ds")
    out = tmp_path / "tok"
    assert main_tokenizer(["--data", str(data), "--out", str(out), "--preset", "tiny", "--device", "cpu",
                           "--threads", "1", "--steps", "6", "--batch-size", "8", "--val-fraction", "0.3",
                           "--no-progress", "--augment", "default", "--clean-fraction", "0.5"]) == 0
    _, meta = load_checkpoint(out / engine.LATEST, expected_kind="tokenizer")
    assert meta["extra"]["augment"] == dict(AUGMENT_PRESETS["default"].to_dict(), clean_fraction=0.5)
    assert json.loads((out / engine.HISTORY_FILE).read_text())[-1]["step"] == 6
    with pytest.raises(SystemExit):
        main_tokenizer(["--data", str(data), "--out", str(tmp_path / "bad"), "--clean-fraction", "1.5"])
