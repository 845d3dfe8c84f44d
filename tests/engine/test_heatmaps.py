"""engine.heatmaps: the heat layer the viewer lays over the X-ray (transparent below the cut-off,
one scale per case, a perceptually ordered colour map)."""

import io

import numpy as np
import pytest
from PIL import Image

from engine import heatmaps
from engine.decode import decode
from tests.conftest import shared_data_path

JPEG = ("kermany_pneumonia_model_package", "person1946_bacteria_4874.jpeg")


def _rgba(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as png:
        assert png.format == "PNG" and png.mode == "RGBA"
        return np.asarray(png, dtype=np.int16)


def test_it_renders_a_transparent_layer_with_the_images_aspect_ratio():
    image = decode(shared_data_path(*JPEG).read_bytes())  # not square
    cam = np.zeros((7, 7), np.float32)
    cam[2, 5] = 3.0
    pixels = _rgba(heatmaps.heatmap_overlay_png(image, cam, size=512))
    height, width = pixels.shape[:2]
    assert max(height, width) == 512
    assert width / height == pytest.approx(image.shape[1] / image.shape[0], rel=0.01)
    hot = pixels[int(height * 2.5 / 7), int(width * 5.5 / 7)]
    cold = pixels[int(height * 6.5 / 7), int(width * 0.5 / 7)]
    # Heat only around the hot spot; the rest of the film is left untouched (alpha 0).
    assert hot[3] > 150 and cold[3] == 0
    assert (pixels[..., 3] == 0).mean() > 0.8


def test_it_upsamples_smoothly():
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0
    alpha = heatmaps.heat_layer(cam, (448, 448))[..., 3].astype(np.float64)
    # Bicubic: the opacity falls off with no step larger than a few levels between neighbours.
    assert np.abs(np.diff(alpha, axis=1)).max() < 12 and np.abs(np.diff(alpha, axis=0)).max() < 12
    # ...and round, not the diamond of bilinear: equal distance along the axis and the diagonal
    # from the centre give similar opacity.
    centre, r = 224, 40
    d = round(r / np.sqrt(2))
    assert alpha[centre, centre + r] == pytest.approx(alpha[centre + d, centre + d], abs=25)


def test_it_puts_all_findings_of_a_case_on_one_scale():
    strong = np.zeros((7, 7), np.float32)
    strong[3, 3] = 10.0
    weak = strong * 0.1  # a tenth of the case's strongest map
    scale = heatmaps.case_scale([strong, weak])
    assert scale == 10.0
    assert heatmaps.heat_layer(strong, (70, 70), scale=scale)[..., 3].max() > 150
    # Below the cut-off of the shared scale: nothing is drawn, where its own scale would show a hotspot.
    assert heatmaps.heat_layer(weak, (70, 70), scale=scale)[..., 3].max() == 0
    assert heatmaps.heat_layer(weak, (70, 70))[..., 3].max() > 150
    peaks = heatmaps.map_peaks({"a": strong.tolist(), "b": weak.tolist()})
    assert peaks == pytest.approx({"a": 1.0, "b": 0.1})


def test_it_leaves_an_empty_map_fully_transparent():
    flat = np.full((50, 40), 0.5, np.float32)
    data = heatmaps.heatmap_overlay_png(flat, np.zeros((7, 7), np.float32), size=64)
    pixels = _rgba(data)
    assert pixels.shape[:2] == (64, 51) and (pixels[..., 3] == 0).all()
    assert heatmaps.case_scale([np.zeros((7, 7))]) == 0.0
    assert heatmaps.map_peaks({"a": np.zeros((7, 7)).tolist()}) == {"a": 0.0}


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB colours (0-255)."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116 * np.cbrt(y) - 16, y * 24389 / 27)


def test_it_colours_with_a_map_whose_lightness_rises_evenly():
    lightness = _lightness(heatmaps.COLOUR_MAP)
    steps = np.diff(lightness[::16])
    # Monotonic (a reader can order the colours by lightness alone, whatever their colour vision)
    # and even (no band that looks like an edge): jet fails both.
    assert (steps > 0).all()
    assert steps.max() / steps.min() < 1.6
    assert lightness[-1] - lightness[0] > 50


def test_it_matches_matplotlibs_viridis():
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib (via grad-cam) gives the reference")
    reference = np.round(matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert np.abs(heatmaps.COLOUR_MAP.astype(np.float64) - reference).max() <= 4
    stops = heatmaps.colour_stops(3)
    assert [fraction for fraction, _ in stops] == [0.0, 0.5, 1.0]
    assert all(colour.startswith("#") and len(colour) == 7 for _, colour in stops)
