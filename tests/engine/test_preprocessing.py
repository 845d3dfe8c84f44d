"""Preprocessing as data (engine.preprocessing) and its implementation (engine.pipeline.preprocess),
profile by profile, against a reference implementation on real images: TorchXRayVision's own
normalize / XRayCenterCrop / XRayResizer, and torchvision's transforms for the ImageNet profile."""

import numpy as np
import pytest
import torch

from engine.decode import decode
from engine.pipeline import preprocess
from engine.preprocessing import (
    IMAGENET,
    TORCHXRAYVISION,
    PreprocessingError,
    preprocessing_check,
    preprocessing_describe,
    preprocessing_profile,
)
from tests.conftest import shared_data_path
from tests.xrv import XRV_IMAGES, xrv_input, xrv_module

REAL_IMAGES = [
    ("nih_reproduce_chexnet", "images", "00000075_000.png"),
    ("kermany_pneumonia_model_package", "person1946_bacteria_4874.jpeg"),  # 968 x 592
    ("bob_med_tb", "raw_with_black_border.png"),  # 623 x 512
    ("pydicom_data", "RG1_UNCR.dcm"),  # 16-bit MONOCHROME1 DICOM
]


def _decoded(parts) -> np.ndarray:
    return decode(shared_data_path(*parts).read_bytes())


@pytest.mark.parametrize("parts", XRV_IMAGES, ids=lambda p: p[-1])
@pytest.mark.parametrize("size", [224, 512])
def test_the_torchxrayvision_profile_is_xrvs_own_preprocessing(parts, size):
    """xrv's README reads the file with skimage and normalize(img, 255); lungsite decodes it to
    [0, 1] first: the same pixels."""
    ours = preprocess(_decoded(parts), {**TORCHXRAYVISION, "input_size": size})
    reference = xrv_input(parts, size)
    assert ours.shape == reference.shape == (1, 1, size, size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-3)  # in units of [-1024, 1024]


def test_the_torchxrayvision_profile_on_a_dicom_and_on_decode_gray_output():
    """A 16-bit DICOM decoded to [0, 1], given to xrv's own functions with maxval 1; and the uint8
    picture of decode_gray (jobs/) equal to its float."""
    xrv = xrv_module()
    from engine.decode import decode_gray

    image = _decoded(REAL_IMAGES[3])
    reference = xrv.datasets.normalize(image, 1.0)[None]
    reference = xrv.datasets.XRayResizer(224)(xrv.datasets.XRayCenterCrop()(reference))
    np.testing.assert_allclose(preprocess(image, TORCHXRAYVISION)[0], reference, atol=1e-3)
    data = shared_data_path(*XRV_IMAGES[0]).read_bytes()
    gray = decode_gray(data)
    assert gray.dtype == np.uint8
    np.testing.assert_allclose(
        preprocess(gray, TORCHXRAYVISION), preprocess(decode(data), TORCHXRAYVISION), atol=1e-3
    )


@pytest.mark.parametrize("parts", REAL_IMAGES, ids=lambda p: p[-1])
def test_the_imagenet_profile_is_torchvisions_resize_and_normalize(parts):
    """torchvision's tensor path (its own antialiased bilinear, not Pillow's) within a hundredth
    of a standard deviation; the whole field of view stretched to the square."""
    from torchvision.transforms import v2

    image = _decoded(parts)
    ours = preprocess(image, IMAGENET)
    reference = v2.Compose(
        [
            v2.Resize((224, 224), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.Normalize(IMAGENET["mean"], IMAGENET["std"]),
        ]
    )(torch.from_numpy(image)[None].repeat(3, 1, 1))
    assert ours.shape == (1, 3, 224, 224)
    difference = np.abs(ours[0] - reference.numpy())
    assert float(difference.mean()) < 1e-3 and float(difference.max()) < 2e-2


def test_a_centre_crop_keeps_what_torchvisions_center_crop_keeps():
    """crop "center" then a bilinear resize, against torchvision CenterCrop(shorter side) + Resize on
    a PIL image (Pillow's bilinear both ways). 968 x 592: both cut 188 rows from the top."""
    from PIL import Image
    from torchvision.transforms import CenterCrop, Resize

    image = _decoded(REAL_IMAGES[1])
    spec = {**IMAGENET, "crop": "center", "channels": 1, "mean": [0.0], "std": [1.0]}
    ours = preprocess(image, spec)[0, 0]
    picture = Image.fromarray(image).convert("F")
    reference = np.asarray(Resize((224, 224))(CenterCrop(min(image.shape))(picture)))
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_old_rows_mean_what_they_meant():
    """A row written before value_range/crop/resize existed is the ImageNet profile."""
    old = {"input_size": 224, "channels": 3, "mean": IMAGENET["mean"], "std": IMAGENET["std"]}
    image = _decoded(REAL_IMAGES[0])
    np.testing.assert_array_equal(preprocess(image, old), preprocess(image, IMAGENET))
    assert preprocessing_profile(old) == "imagenet"


def test_it_checks_and_expands_profiles():
    assert preprocessing_check(None) == IMAGENET
    assert preprocessing_check({"profile": "torchxrayvision", "input_size": 512}) == {
        **TORCHXRAYVISION,
        "input_size": 512,
    }
    one = preprocessing_check({"channels": 1, "mean": [0.5], "std": [0.25]})
    assert one["channels"] == 1 and one["value_range"] == [0.0, 1.0]
    for spec, message in [
        ({"profile": "vit"}, "Unknown preprocessing profile"),
        ({"size": 3}, "Unknown preprocessing keys: size"),
        ({"input_size": 16}, "input_size must be an integer from 32"),
        ({"channels": 3, "mean": [1, 2]}, "mean must be a list of 1 or 3 numbers"),
        ({"value_range": [0]}, "value_range must be two numbers"),
        ({"crop": "random"}, "crop must be one of: none, center"),
        ({"resize": "nearest"}, "resize must be one of: bilinear, skimage"),
        ("224", "must be a JSON object"),
    ]:
        with pytest.raises(PreprocessingError, match=message):
            preprocessing_check(spec)


def test_it_describes_a_profile_in_words():
    text = preprocessing_describe({**TORCHXRAYVISION, "input_size": 512})
    assert text.startswith("Profile torchxrayvision: grey image mapped to [-1024, 1024]")
    assert "centre square cropped" in text and "512 x 512 (skimage.transform.resize)" in text
    assert "1 channel" in text and "no further normalisation" in text
    assert "mean 0.485, 0.456, 0.406" in preprocessing_describe(IMAGENET)
