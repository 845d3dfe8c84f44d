"""INT8 serving graphs at registration (`model_version_register(precision="int8")`): the version's
FP32 serving graph quantized by engine.quantize, calibrated on real images given at registration
(`register_model --calibration-images DIR`), and what the two graphs' outputs differ
by on those images, recorded on the version's model card. FP32 stays the default."""

from __future__ import annotations

from pathlib import Path

from engine.preprocessing import preprocessing_complete

FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)
# Images calibrated on, at most (more change the ranges little and cost seconds each).
CALIBRATION_IMAGES = 32

METHOD = (
    "ONNX Runtime static quantization (QDQ): the convolutions with 8-bit weights (per channel) and "
    "8-bit activations calibrated (MinMax) on real chest X-rays; the classifier and the heatmaps' "
    "closed form stay FP32"
)


class CalibrationError(ValueError):
    """No usable calibration images: the message says what to give."""


def calibration_images(folder: Path, *, count: int = CALIBRATION_IMAGES) -> list[bytes]:
    """The bytes of the first `count` PNG/JPEG/DICOM files of `folder` (name order, so the same
    folder calibrates the same way)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(
            f"No calibration images: {folder} is not a folder. Give a folder of real chest X-rays."
        )
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
    return [p.read_bytes() for p in paths[:count]]


def int8_graph(graph: bytes, *, preprocessing: dict, images: list[bytes]) -> tuple[bytes, dict]:
    """The INT8 graph of an FP32 serving graph, calibrated on `images` (bytes of real X-rays,
    decoded and preprocessed as the version's uploads are; at most CALIBRATION_IMAGES are used),
    and the card entry that says so: method, images used and the largest probability difference
    and heatmap correlation against the FP32 graph on them. Raises CalibrationError."""
    from engine.decode import DecodeError, decode_gray
    from engine.pipeline import preprocess
    from engine.quantize import MIN_CALIBRATION_IMAGES, compare, quantize_int8
    from engine.serving import ServingRuntime

    spec = preprocessing_complete(preprocessing)
    tensors = []
    for data in images[:CALIBRATION_IMAGES]:
        try:
            tensors.append(preprocess(decode_gray(data, frontal_chest_only=True), spec))
        except DecodeError:
            continue  # not a usable X-ray: not calibrated on
    if len(tensors) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f"INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} readable chest X-rays; "
            f"{len(tensors)} were usable."
        )
    quantized = quantize_int8(graph, tensors)
    size = int(spec.get("input_size", 224))
    measured = compare(
        ServingRuntime.from_graph(graph, size), ServingRuntime.from_graph(quantized, size), tensors
    )
    card = {
        "precision": INT8,
        "method": METHOD,
        "calibration_images": len(tensors),
        "max_abs_probability_diff_vs_fp32": measured["max_abs_probability_diff"],
        "heatmap_correlation_p05_vs_fp32": measured["heatmap_correlation_p05"],
    }
    return quantized, card


def precision_statement(card_entry: dict | None) -> str:
    """What an INT8 version says about itself (results, admin page, model card)."""
    entry = card_entry or {}
    measured = ""
    if entry.get("max_abs_probability_diff_vs_fp32") is not None:
        measured = (
            f" On its {entry.get('calibration_images')} calibration images its scores differ from the FP32 "
            f"graph's by up to {entry['max_abs_probability_diff_vs_fp32']:.3f}."
        )
    return (
        "INT8: this version serves a graph quantized to 8-bit integers (ONNX Runtime static "
        "quantization), not its FP32 weights as trained." + measured
    )
