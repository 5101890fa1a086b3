"""Batch augmentation on the device: per-image random transforms, reproducible from a generator."""

from __future__ import annotations

import pytest
import torch

from fsl_lightning.data.augment import (
    BatchAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_resize,
    horizontal_flip,
    sample_crop_boxes,
)

NO_AUGMENTATION = dict(random_resized_crop=False, horizontal_flip=False, color_jitter=0.0, hue=0.0)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(count: int = 8, channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=seeded(123))


def half_black_half_white(size: int = 4) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size)
    image[..., size // 2 :] = 1.0
    return image


def flat_differences(outputs: torch.Tensor) -> torch.Tensor:
    """Largest difference of every image from the first one: all > 0 when every image got its own transform."""
    return (outputs[1:] - outputs[:1]).flatten(1).abs().amax(dim=1)


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_range_are_preserved(channels):
    images = random_images(channels=channels)
    outputs = BatchAugmentation(hue=0.2 if channels == 3 else 0.0)(images, seeded())
    assert outputs.shape == images.shape and outputs.dtype == torch.float32
    assert outputs.min() >= 0.0 and outputs.max() <= 1.0


def test_leading_dimensions_are_kept():
    images = torch.rand(2, 5, 3, 12, 12, generator=seeded())
    assert BatchAugmentation()(images, seeded()).shape == images.shape


def test_same_seed_same_output_and_other_seed_differs():
    images, augment = random_images(), BatchAugmentation(hue=0.1)
    assert torch.equal(augment(images, seeded(7)), augment(images, seeded(7)))
    assert not torch.equal(augment(images, seeded(7)), augment(images, seeded(8)))


def test_global_rng_is_used_without_generator():
    images, augment = random_images(), BatchAugmentation()
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    assert torch.equal(first, augment(images))


def test_every_image_gets_its_own_transform():
    images = random_images(count=1).expand(16, -1, -1, -1)
    assert (flat_differences(BatchAugmentation()(images, seeded())) > 1e-4).all()


def test_full_crop_without_flip_or_jitter_is_identity():
    images = random_images()
    augment = BatchAugmentation(
        random_resized_crop=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), horizontal_flip=False, color_jitter=0.0
    )
    torch.testing.assert_close(augment(images, seeded()), images)


def test_no_augmentation_is_identity():
    images = random_images()
    torch.testing.assert_close(BatchAugmentation(**NO_AUGMENTATION)(images, seeded()), images)


def test_flip_only_gives_the_image_or_its_mirror_both_in_a_batch():
    image = random_images(count=1)
    outputs = BatchAugmentation(**{**NO_AUGMENTATION, "horizontal_flip": True})(image.expand(64, -1, -1, -1), seeded())
    unchanged = (outputs == image).flatten(1).all(dim=1)
    mirrored = (outputs == image.flip(-1)).flatten(1).all(dim=1)
    assert (unchanged | mirrored).all()
    assert unchanged.any() and mirrored.any()


def test_horizontal_flip_follows_the_mask():
    images = random_images(count=2)
    flipped = horizontal_flip(images, torch.tensor([True, False]))
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])


def test_crop_resize_matches_hand_computed_bilinear_samples():
    # Columns 0-1 black, 2-3 white. Box x in [1, 3] over 4 output columns samples x = 0.75, 1.25, 1.75, 2.25
    # (pixel centres at j + 0.5), i.e. weights 0, 0.25, 0.75, 1 of the white column.
    image = half_black_half_white()
    middle = crop_resize(image, torch.tensor([[1.0, 0.0, 3.0, 4.0]]))
    torch.testing.assert_close(middle[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(4, 4))
    # The left half samples x = -0.25 (clamped to the edge), 0.25, 0.75, 1.25: black up to the last column.
    left = crop_resize(image, torch.tensor([[0.0, 0.0, 2.0, 4.0]]))
    torch.testing.assert_close(left[0, 0], torch.tensor([0.0, 0.0, 0.0, 0.25]).expand(4, 4))


def test_crop_resize_of_the_whole_image_is_identity_per_image_box():
    images = random_images(count=3)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(3, 4)
    torch.testing.assert_close(crop_resize(images, whole), images)
    corner = crop_resize(
        images, torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0], [0, 0, 16, 16]]), output_size=(8, 8)
    )
    torch.testing.assert_close(corner[0], images[0, :, :8, :8])
    torch.testing.assert_close(corner[1], images[1, :, 8:, 8:])


def test_sampled_boxes_lie_inside_the_image_with_the_requested_area():
    boxes = sample_crop_boxes(1000, 20, 30, (0.2, 0.5), (0.5, 2.0), seeded())
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 30 + 1e-4).all() and (y2 <= 20 + 1e-4).all()
    area_fraction = (x2 - x1) * (y2 - y1) / 600
    assert (area_fraction <= 0.5 + 1e-5).all() and (area_fraction >= 0.2 - 1e-5).all()


def test_brightness_matches_hand_computed_factor():
    constant = torch.full((2, 3, 4, 4), 0.5)
    outputs = adjust_brightness(constant, torch.tensor([0.6, 1.4]))
    torch.testing.assert_close(outputs[0], torch.full((3, 4, 4), 0.3))
    torch.testing.assert_close(outputs[1], torch.full((3, 4, 4), 0.7))


def test_contrast_and_saturation_blend_with_gray():
    images = random_images(count=2)
    gray = adjust_saturation(images, torch.zeros(2))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    flat = adjust_contrast(images, torch.zeros(2))
    assert torch.allclose(flat, flat.mean(dim=(1, 2, 3), keepdim=True))
    torch.testing.assert_close(adjust_contrast(images, torch.ones(2)), images)


def test_hue_keeps_gray_and_full_turn():
    images = random_images(count=2)
    torch.testing.assert_close(adjust_hue(images, torch.tensor([0.0, 1.0])), images)
    gray = torch.full((1, 3, 4, 4), 0.4)
    torch.testing.assert_close(adjust_hue(gray, torch.tensor([0.3])), gray)
    assert not torch.allclose(adjust_hue(images, torch.tensor([0.25, -0.25])), images)


def test_jitter_of_a_constant_gray_image_is_a_per_image_brightness():
    # Contrast and saturation leave a flat gray image alone, so only the brightness factor in [0.6, 1.4] shows.
    constant = torch.full((32, 3, 8, 8), 0.5)
    outputs = BatchAugmentation(**{**NO_AUGMENTATION, "color_jitter": 0.4})(constant, seeded())
    per_image = outputs.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1])
    assert (per_image >= 0.3 - 1e-6).all() and (per_image <= 0.7 + 1e-6).all()
    assert (flat_differences(outputs) > 0).all()


def test_grayscale_images_get_brightness_and_contrast_only():
    images = random_images(channels=1)
    outputs = BatchAugmentation(**{**NO_AUGMENTATION, "color_jitter": 0.4, "hue": 0.3})(images, seeded())
    assert outputs.shape == images.shape and not torch.allclose(outputs, images)


def test_padded_crop_is_an_exact_window_of_the_zero_padded_image_at_a_random_offset():
    # RFS's RandomCrop(84, padding=8): every output is the image padded with 8 zeros, cut at offset in [0, 16]^2
    generator = torch.Generator().manual_seed(0)
    images = 0.01 + 0.98 * torch.rand(200, 3, 12, 12, generator=generator)  # no zeros: windows are unique
    augment = BatchAugmentation(random_resized_crop=False, crop_padding=8, horizontal_flip=False, color_jitter=0.0)
    out = augment(images, generator)
    padded = torch.nn.functional.pad(images, (8, 8, 8, 8))
    offsets = []
    for index in range(len(images)):
        found = [
            (top, left)
            for top in range(17)
            for left in range(17)
            if torch.equal(out[index], padded[index, :, top : top + 12, left : left + 12])
        ]
        assert len(found) == 1
        offsets += found
    tops, lefts = zip(*offsets)
    assert min(tops) == min(lefts) == 0 and max(tops) == max(lefts) == 16  # the whole range is drawn
    assert len(set(offsets)) > 100  # and the two axes independently


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
        (dict(crop_scale=(0.5, 1.5)), "crop_scale"),
        (dict(crop_scale=(0.9, 0.5)), "crop_scale"),
        (dict(crop_ratio=(4 / 3, 3 / 4)), "crop_ratio"),
        (dict(crop_ratio=(0.0, 1.0)), "crop_ratio"),
        (dict(color_jitter=-0.1), "color_jitter"),
        (dict(hue=-0.1), "hue"),
        (dict(hue=0.6), "hue"),
        (dict(random_resized_crop=False, crop_padding=-1), "crop_padding"),
        (dict(crop_padding=8), "random_resized_crop: false"),
    ],
)
def test_bad_arguments_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        BatchAugmentation(**arguments)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="float"):
        BatchAugmentation()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        BatchAugmentation()(torch.rand(2, 4, 8, 8))


def test_is_chosen_from_a_config_by_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--augmentation", type=BatchAugmentation)
    config = parser.parse_args(
        [
            "--augmentation",
            '{"class_path": "fsl_lightning.data.augment.BatchAugmentation", '
            '"init_args": {"crop_scale": [0.5, 1.0], "color_jitter": 0.2}}',
        ]
    )
    augmentation = parser.instantiate_classes(config).augmentation
    assert isinstance(augmentation, BatchAugmentation)
    assert augmentation.crop_scale == (0.5, 1.0) and augmentation.color_jitter == 0.2
