"""A version's preprocessing, as data: what the network expects to see, checked and put in words. No
Django and no torch here; engine.pipeline.preprocess does the work this data describes.

The steps, in order, from the decoded grey picture in [0, 1] (engine.decode):
1. `value_range` [lo, hi]: the picture mapped linearly onto [lo, hi] ([0, 1]: unchanged;
   TorchXRayVision: [-1024, 1024], what `xrv.datasets.normalize(img, maxval)` gives).
2. `crop`: "none" keeps the whole field of view; "center" keeps the centred square of side
   min(H, W), as `xrv.datasets.XRayCenterCrop` cuts it.
3. `resize` to `input_size` x `input_size`: "bilinear" is Pillow's antialiased bilinear (what
   torchvision's `Resize` does to a PIL image); "skimage" is `skimage.transform.resize` with
   linear interpolation, Gaussian antialiasing and zero-valued edges, exactly as
   `xrv.datasets.XRayResizer` calls it.
4. `(x - mean) / std` per channel, the grey plane repeated over `channels` (3, or 1).
"""

from __future__ import annotations

from numbers import Real

IMAGENET = {
    "input_size": 224,
    "channels": 3,
    "value_range": [0.0, 1.0],
    "crop": "none",
    "resize": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}

# TorchXRayVision's own preprocessing (its README and xrv.utils.load_image): normalize to
# [-1024, 1024], one channel, XRayCenterCrop, XRayResizer(224); nothing else.
TORCHXRAYVISION = {
    "input_size": 224,
    "channels": 1,
    "value_range": [-1024.0, 1024.0],
    "crop": "center",
    "resize": "skimage",
    "mean": [0.0],
    "std": [1.0],
}

PROFILES = {"imagenet": IMAGENET, "torchxrayvision": TORCHXRAYVISION}
KEYS = frozenset(IMAGENET)
CROPS = ("none", "center")
RESIZES = ("bilinear", "skimage")
MAX_INPUT_SIZE = 1024


class PreprocessingError(ValueError):
    """A preprocessing that cannot be used; the message names the key and what it accepts."""


def preprocessing_complete(spec: dict | None) -> dict:
    """`spec` with every key: rows written before a key existed mean what the code did then (the
    ImageNet profile's value for it)."""
    return {**IMAGENET, **(spec or {})}


def _numbers(values, count: tuple[int, ...]) -> bool:
    return (
        isinstance(values, list)
        and len(values) in count
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in values)
    )


def preprocessing_check(spec: dict | None) -> dict:
    """The complete preprocessing for `spec` (None or {}: the ImageNet profile). `spec` may name a
    profile (`{"profile": "torchxrayvision"}`) and override its keys (`"input_size": 512`).
    Raises PreprocessingError saying which key is wrong."""
    if not spec:
        return dict(IMAGENET)
    if not isinstance(spec, dict):
        raise PreprocessingError("Preprocessing must be a JSON object.")
    spec = dict(spec)
    profile = spec.pop("profile", None)
    if profile is not None and profile not in PROFILES:
        raise PreprocessingError(f"Unknown preprocessing profile {profile!r}; known: {', '.join(PROFILES)}.")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise PreprocessingError(
            f"Unknown preprocessing keys: {', '.join(unknown)} "
            f"(accepted: profile, {', '.join(sorted(KEYS))})."
        )
    spec = {**PROFILES[profile or "imagenet"], **spec}
    size = spec["input_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= MAX_INPUT_SIZE:
        raise PreprocessingError(f"preprocessing.input_size must be an integer from 32 to {MAX_INPUT_SIZE}.")
    if spec["channels"] not in (1, 3) or isinstance(spec["channels"], bool):
        raise PreprocessingError("preprocessing.channels must be 1 or 3.")
    if not _numbers(spec["value_range"], (2,)) or not spec["value_range"][0] < spec["value_range"][1]:
        raise PreprocessingError("preprocessing.value_range must be two numbers [low, high], low < high.")
    if spec["crop"] not in CROPS:
        raise PreprocessingError(f"preprocessing.crop must be one of: {', '.join(CROPS)}.")
    if spec["resize"] not in RESIZES:
        raise PreprocessingError(f"preprocessing.resize must be one of: {', '.join(RESIZES)}.")
    for key in ("mean", "std"):
        allowed = (1,) if spec["channels"] == 1 else (1, 3)
        if not _numbers(spec[key], allowed):
            raise PreprocessingError(
                f"preprocessing.{key} must be a list of {' or '.join(map(str, allowed))} numbers "
                f"for {spec['channels']} channel{'s' if spec['channels'] > 1 else ''}."
            )
    if any(float(v) <= 0 for v in spec["std"]):
        raise PreprocessingError("preprocessing.std values must be greater than 0.")
    spec["value_range"] = [float(v) for v in spec["value_range"]]
    spec["mean"] = [float(v) for v in spec["mean"]]
    spec["std"] = [float(v) for v in spec["std"]]
    return spec


def preprocessing_profile(spec: dict | None) -> str | None:
    """The name of the profile `spec` is (input size aside), or None."""
    complete = preprocessing_complete(spec)
    for name, profile in PROFILES.items():
        if all(complete[key] == profile[key] for key in KEYS - {"input_size"}):
            return name
    return None


def _number(value: float) -> str:
    return f"{value:g}"


def preprocessing_describe(spec: dict | None) -> str:
    """The preprocessing in one paragraph, for the admin page and the model card."""
    s = preprocessing_complete(spec)
    lo, hi = s["value_range"]
    profile = preprocessing_profile(s)
    parts = [
        f"{'Profile ' + profile + ': ' if profile else ''}"
        f"grey image mapped to [{_number(lo)}, {_number(hi)}]",
        "centre square cropped (side = the shorter side)" if s["crop"] == "center" else "whole image kept",
        f"resized to {s['input_size']} x {s['input_size']} "
        + ("(Pillow bilinear, antialiased)" if s["resize"] == "bilinear" else "(skimage.transform.resize)"),
        f"{s['channels']} channel{'s' if s['channels'] > 1 else ''}",
    ]
    mean, std = s["mean"], s["std"]
    if all(v == 0 for v in mean) and all(v == 1 for v in std):
        parts.append("no further normalisation")
    else:
        parts.append(
            f"then (x - mean) / std with mean {', '.join(map(_number, mean))} and std "
            f"{', '.join(map(_number, std))}"
        )
    return "; ".join(parts) + "."
