"""Augmentation as config: random choices are a pure function of (seed, epoch, index); the geometry is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddtrain.compose import compose
from ddtrain.validation import validate
from ddtrain.data.augment import (Transform, apply_pil, apply_tensor, draft_size, from_config, sample_generator,
                                  to_model_input)
from ddtrain.errors import UserError

IMAGENET = Transform(("random_resized_crop", "hflip"), crop_size=16)
CIFAR = Transform(("pad_crop", "hflip"), pad=4)


def picture(w=40, h=30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def augmented(t: Transform, seed: int, epoch: int, index: int, pixels=None) -> np.ndarray:
    img = Image.fromarray(picture() if pixels is None else pixels)
    return np.asarray(apply_pil(img, t.plan(img.size[0], img.size[1], sample_generator(seed, epoch, index))))


@pytest.mark.parametrize("t", [IMAGENET, CIFAR], ids=["imagenet", "cifar"])
def test_same_seed_epoch_and_index_give_the_same_sample(t):
    a, b = augmented(t, 7, 3, 11), augmented(t, 7, 3, 11)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("t", [IMAGENET, CIFAR], ids=["imagenet", "cifar"])
def test_epochs_indices_and_seeds_change_the_random_choices(t):
    ref = augmented(t, 7, 3, 11)
    for other in ((7, 4, 11), (7, 3, 12), (8, 3, 11)):
        plans = [t.plan(40, 30, sample_generator(*args)) for args in ((7, 3, 11), other)]
        assert plans[0] != plans[1], other
    # over several epochs the same sample is not always augmented the same way
    assert any(not np.array_equal(ref, augmented(t, 7, e, 11)) for e in range(4, 8))


def test_random_resized_crop_stays_inside_the_image_and_has_the_crop_size():
    for index in range(200):
        steps = IMAGENET.plan(40, 30, sample_generator(0, 0, index))
        kind, (l, t, r, b), size = steps[0]
        assert kind == "resize" and size == (16, 16)
        assert 0 <= l < r <= 40 and 0 <= t < b <= 30
        area = (r - l) * (b - t) / (40 * 30)
        assert 0.08 * 0.9 <= area <= 1.0 and 3 / 4 * 0.9 <= (r - l) / (b - t) <= 4 / 3 * 1.1 or (r - l, b - t) == (40, 30)
    assert augmented(IMAGENET, 0, 0, 1).shape == (16, 16, 3)


def test_pad_crop_shifts_in_zeros_and_keeps_the_size():
    pixels = np.full((8, 8, 3), 200, dtype=np.uint8)
    shifted = [augmented(Transform(("pad_crop",), pad=4), 0, 0, i, pixels) for i in range(30)]
    assert all(s.shape == (8, 8, 3) for s in shifted)
    assert any((s == 0).any() for s in shifted)  # some crops reach into the padding
    assert all(set(np.unique(s)) <= {0, 200} for s in shifted)


def test_flip_is_a_mirror_and_happens_about_half_the_time():
    t = Transform(("hflip",))
    pixels = picture()
    flips = [not np.array_equal(augmented(t, 0, 0, i, pixels), pixels) for i in range(200)]
    assert 60 < sum(flips) < 140
    flipped = augmented(t, 0, 0, flips.index(True), pixels)
    assert np.array_equal(flipped, pixels[:, ::-1])


def test_evaluation_resize_and_center_crop_as_torchvision():
    t = Transform(("resize", "center_crop"), crop_size=20, resize_size=24)
    steps = t.plan(40, 30, None)
    assert steps == [("resize", (0, 0, 40, 30), (32, 24)), ("crop", (6, 2, 26, 22))]
    assert np.asarray(apply_pil(Image.fromarray(picture()), steps)).shape == (20, 20, 3)


def test_tensor_and_pillow_paths_share_the_geometry():
    pixels = picture()
    for t in (IMAGENET, CIFAR, Transform(("resize", "center_crop"), crop_size=20, resize_size=24)):
        steps = t.plan(40, 30, sample_generator(1, 2, 3))
        from_pil = np.asarray(apply_pil(Image.fromarray(pixels), steps)).astype(int)
        from_tensor = apply_tensor(torch.from_numpy(pixels).permute(2, 0, 1), steps).permute(1, 2, 0).numpy()
        assert from_pil.shape == from_tensor.shape
        if not any(s[0] == "resize" for s in steps):  # crops and flips: exactly the same pixels
            assert np.array_equal(from_pil, from_tensor)
        else:  # two bilinear resamplers: close, not equal
            assert np.abs(from_pil - from_tensor.astype(int)).mean() < 12


def test_jpeg_draft_only_when_the_first_step_halves_the_image():
    big = Transform(("resize",), resize_size=50)
    assert draft_size(big.plan(400, 300, None), 400, 300) == (67, 50)
    assert draft_size(Transform(("resize",), resize_size=200).plan(400, 300, None), 400, 300) is None
    assert draft_size(Transform(("hflip",)).plan(400, 300, sample_generator(0, 0, 0)), 400, 300) is None


def test_normalisation_on_the_device_from_uint8():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = to_model_input(x, (torch.tensor([0.5, 0.2]), torch.tensor([0.5, 0.2])), torch.device("cpu"))
    torch.testing.assert_close(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 1.0]]]]))
    assert out.dtype == torch.float32 and out.is_contiguous()


def dataset_cfg(*overrides):
    return compose("train", ["dataset=image_folder", *overrides])


@pytest.mark.parametrize("overrides,needle", [
    (["dataset.augment=[rotate]"], "unknown op rotate"),
    (["dataset.eval_transform=[hflip]"], "hflip is random"),
    (["dataset.augment=[random_resized_crop]"], "dataset.crop_size > 0"),
    (["dataset.eval_transform=[resize]"], "dataset.resize_size > 0"),
    (["dataset.crop_scale=[0.5,0.1]"], "dataset.crop_scale"),
    (["dataset.mean=[0.5]"], "dataset.mean"),
    (["dataset.channels=2"], "dataset.channels=2"),
    (["dataset=cifar10", "dataset.augment=[pad_crop,hflip]"], "held in memory"),
])
def test_bad_transform_config_names_the_key(overrides, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        validate(dataset_cfg(*overrides), 1)


def test_transform_config_is_read_into_the_transform():
    cfg = dataset_cfg("dataset.augment=[random_resized_crop,hflip]", "dataset.crop_size=224",
                      "dataset.crop_scale=[0.25,1]")
    validate(cfg, 1)
    t = from_config(cfg.dataset, "augment")
    assert t == Transform(("random_resized_crop", "hflip"), 224, 0, 4, (0.25, 1.0), (3 / 4, 4 / 3)) and t.random
    assert from_config(cfg.dataset, "eval_transform") == Transform((), 224, 0, 4, (0.25, 1.0), (3 / 4, 4 / 3))
