"""Writes to the registry. Every caller (admin, management commands, REST API, bootstrap) goes through
`model_version_register` and `model_version_activate`; nothing else sets `is_active`."""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable
from numbers import Real
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.utils import timezone

from common.errors import LungsiteError
from engine.architectures import ARCHITECTURES
from engine.preprocessing import (
    PreprocessingError,
    preprocessing_check,
    preprocessing_complete,
    preprocessing_describe,
)
from engine.weights import (
    SOURCES,
    ExportFailed,
    WeightsError,
    check_graph_outputs,
    serving_graph_from_weights,
    weights_prepare,
)
from engine.xrv_format import EXTRA_OUTPUTS
from registry.models import (
    DEFAULT_CLASS_NAMES,
    DEFAULT_PREPROCESSING,
    PUBLISHED_AUROC_LABEL,
    ActivationEvent,
    ModelVersion,
)
from registry.storage import (
    WeightsIntegrityError,
    WeightsStorageUnavailable,
    serving_graph_read,
    serving_graph_save,
    weights_read,
    weights_save,
    weights_storage,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

VIA_VALUES = {value for value, _ in ActivationEvent.VIA_CHOICES}
MAX_SOURCE_LENGTH = 500
# Names end up in URLs (`/heatmaps/<name>.png`) and in CSV headers: no slashes or control characters.
_CLASS_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,100}$")


class RegistrationError(LungsiteError):
    """A version that was refused; the message says which check failed."""

    code = "registration_refused"
    status = 400


class ActivationError(LungsiteError):
    """A version that cannot be activated; the message says why."""

    code = "activation_failed"
    status = 409


class RegistrationUnavailable(RegistrationError):
    """Registration could not finish now (the weights store is unreachable, or the child process
    that checks and exports the weights crashed): nothing was written; try again later."""

    code = "storage_unavailable"
    status = 503


class ActivationUnavailable(ActivationError):
    """Activation could not finish now (the weights store is unreachable, or the child process
    that checks and exports the weights crashed): nothing changed; try again later."""

    code = "storage_unavailable"
    status = 503


class ActivationGateRefused(ActivationError):
    """The evaluation gate refused the version (no evaluation, or worse than the active one on the
    same set); activating it needs a written override reason."""

    code = "evaluation_required"


def _read_weights(file) -> bytes:
    """Bytes from bytes, or from a Django File / UploadedFile / binary file object."""
    if isinstance(file, bytes | bytearray | memoryview):
        return bytes(file)
    if hasattr(file, "chunks"):
        if hasattr(file, "seek"):
            file.seek(0)
        return b"".join(file.chunks())
    if hasattr(file, "read"):
        return file.read()
    raise RegistrationError("The weights must be given as bytes or a file.")


def _check_version_name(version_name: str) -> str:
    version_name = (version_name or "").strip()
    if not version_name:
        raise RegistrationError("A version name is required.")
    if len(version_name) > 200:
        raise RegistrationError("The version name is longer than 200 characters.")
    if version_name.isdigit():
        # Commands and URLs take "ID or name"; an all-digit name would read as an id.
        raise RegistrationError(f"The version name {version_name!r} is only digits; add a letter.")
    if ModelVersion.objects.filter(version_name=version_name).exists():
        raise RegistrationError(f"A version named {version_name!r} already exists.")
    return version_name


def _check_class_names(class_names) -> list[str]:
    if isinstance(class_names, str) or not class_names:
        raise RegistrationError("Class names must be a non-empty list, ordered as the model's outputs.")
    names = [str(name).strip() for name in class_names]
    for name in names:
        if not _CLASS_NAME.match(name):
            raise RegistrationError(
                f"Invalid class name {name!r}: 1 to 100 characters, no slashes or control characters."
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RegistrationError(f"Class names must not repeat: {', '.join(repeated)}.")
    return names


def _is_fraction(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0


def _check_fractions(values, what: str, class_names: list[str] | None) -> dict[str, float]:
    """A JSON object of class name -> number in [0, 1]; the names are checked when known."""
    if values in (None, ""):
        return {}
    if not isinstance(values, dict):
        raise RegistrationError(f"{what} must be a JSON object mapping class names to numbers.")
    if class_names is not None:
        unknown = sorted(set(values) - set(class_names))
        if unknown:
            raise RegistrationError(f"{what} name classes the model does not have: {', '.join(unknown)}.")
    bad = sorted(
        name for name, value in values.items() if not _is_fraction(value) or math.isnan(float(value))
    )
    if bad:
        raise RegistrationError(f"{what} must be numbers between 0 and 1; not so for: {', '.join(bad)}.")
    return {name: float(value) for name, value in values.items()}


def _check_thresholds(thresholds, class_names: list[str] | None) -> dict[str, float]:
    return _check_fractions(thresholds, "Thresholds", class_names)


def _check_published_auroc(per_class, source: str, class_names: list[str] | None) -> dict:
    """{"per_class": {...}, "source": "..."} or {} (nothing published)."""
    per_class = _check_fractions(per_class, "Published AUROC", class_names)
    source = (source or "").strip()
    if not per_class:
        if source:
            raise RegistrationError("A source for the published AUROC was given without the AUROC values.")
        return {}
    if not source:
        raise RegistrationError(
            "Published AUROC needs its source (the paper, model card or page that published it)."
        )
    if len(source) > MAX_SOURCE_LENGTH:
        raise RegistrationError(
            f"The published AUROC's source is longer than {MAX_SOURCE_LENGTH} characters."
        )
    return {"per_class": per_class, "source": source}


def _check_auroc(auroc) -> float | None:
    if auroc is None:
        return None
    if not _is_fraction(auroc) or math.isnan(float(auroc)):
        raise RegistrationError(f"AUROC must be a number between 0 and 1 (got {auroc!r}).")
    return float(auroc)


def _check_preprocessing(preprocessing) -> dict | None:
    """The complete preprocessing (engine.preprocessing), or None when none was given (the weights'
    source decides: ImageNet's, or TorchXRayVision's for its weights)."""
    if not preprocessing:
        return None
    try:
        return preprocessing_check(preprocessing)
    except PreprocessingError as exc:
        raise RegistrationError(str(exc)) from exc


def model_version_register(
    *,
    file=None,
    data: bytes | None = None,
    version_name: str,
    class_names: list[str] | None = None,
    architecture: str = "densenet121",
    preprocessing: dict | None = None,
    thresholds: dict | None = None,
    auroc: float | None = None,
    source: str = "auto",
    extra_outputs: str = "keep",
    published_auroc: dict | None = None,
    published_auroc_source: str = "",
    notes: str = "",
    untrained: bool = False,
    precision: str = "fp32",
    calibration_images: list[bytes] | None = None,
    user: AbstractBaseUser | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelVersion:
    """Checks a weights file, exports its serving graph, stores both by content and writes its row.
    `file` is bytes or a Django File/UploadedFile (`data=` bytes is the older spelling). Every
    metadata check, the load into `architecture` with len(class_names) outputs (shapes and finite
    values, layer by layer, keys as torch's load_state_dict accepts them), the export and a check
    that the graph's outputs are finite run before anything is written: a refused file leaves no
    row and no stored object. The export takes a few seconds (about 3 s for DenseNet121 on an idle
    core, longer on a busy machine); `progress`, when given, is told in words which step starts
    (register_model prints them).

    `source` ("auto", "torchvision", "torchxrayvision"; auto reads a file holding `op_threshs` as
    TorchXRayVision's): TorchXRayVision weights register as they are (engine.xrv_format): their
    outputs mapped to lungsite's findings (the labels beyond them kept or dropped, `extra_outputs`),
    their op_threshs as thresholds (thresholds given here win), their preprocessing unless one is
    given. `class_names`, in output order, defaults to xrv's 18 labels for TorchXRayVision weights
    and to the 13 findings for any other. `published_auroc` ({name: auroc}) with `published_auroc_source`
    records figures published with the weights: shown as "published, not measured here", never an
    evaluation.

    `precision` "int8" serves an INT8 graph instead of the FP32 one (registry.quantization: ONNX
    Runtime static quantization calibrated on `calibration_images`, bytes of real chest X-rays);
    its model card, admin page and every result say so."""
    from registry import quantization

    say = progress or (lambda message: None)
    if precision not in quantization.PRECISIONS:
        raise RegistrationError(
            f"Unknown precision {precision!r}; known: {', '.join(quantization.PRECISIONS)}."
        )
    if file is not None and data is not None:
        raise RegistrationError("Give the weights once: either file= or data=.")
    content = _read_weights(file if file is not None else data if data is not None else b"")
    version_name = _check_version_name(version_name)
    if source not in SOURCES:
        raise RegistrationError(f"Unknown weights source {source!r}; known: {', '.join(SOURCES)}.")
    if extra_outputs not in EXTRA_OUTPUTS:
        raise RegistrationError(f"extra_outputs must be one of: {', '.join(EXTRA_OUTPUTS)}.")
    if class_names is not None:
        class_names = _check_class_names(class_names)
    if architecture not in ARCHITECTURES:
        raise RegistrationError(
            f"Unknown architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}."
        )
    thresholds = _check_thresholds(thresholds, class_names)
    published = _check_published_auroc(published_auroc, published_auroc_source, class_names)
    auroc = _check_auroc(auroc)
    preprocessing = _check_preprocessing(preprocessing)
    try:
        prepared = weights_prepare(
            content,
            architecture=architecture,
            class_names=class_names,
            preprocessing=preprocessing,
            source=source,
            extra_outputs=extra_outputs,
            findings=DEFAULT_CLASS_NAMES,
            progress=say,
        )
    except WeightsError as exc:
        raise RegistrationError(str(exc)) from exc
    except ExportFailed as exc:
        raise RegistrationUnavailable(f"{exc} Nothing was registered.") from exc
    if prepared.class_names != class_names:
        # The file's format named or chose the outputs (TorchXRayVision): check what was given
        # against the outputs that serve.
        class_names = _check_class_names(prepared.class_names)
        thresholds = _check_thresholds(thresholds, class_names)
        published = _check_published_auroc(published_auroc, published_auroc_source, class_names)
    thresholds = {**prepared.thresholds, **thresholds}
    weights_source = dict(prepared.source)
    if prepared.weights is not content:
        weights_source["file_sha256"] = hashlib.sha256(content).hexdigest()
    if prepared.report:
        weights_source["report"] = prepared.report
    graph, precision_card = prepared.graph, None
    if precision == quantization.INT8:
        say("Quantizing the serving graph to INT8 (calibrating on real images)...")
        try:
            graph, precision_card = quantization.int8_graph(
                prepared.graph, preprocessing=prepared.preprocessing, images=calibration_images or []
            )
        except quantization.CalibrationError as exc:
            raise RegistrationError(f"{exc} Nothing was registered.") from exc

    say("Storing the weights and the serving graph...")
    written = []  # names this call stored, removed again if the row cannot be written
    try:
        name, sha256, created = weights_save(prepared.weights)
        if created:
            written.append(name)
        graph_path, graph_sha256, created = serving_graph_save(graph)
        if created:
            written.append(graph_path)
    except WeightsStorageUnavailable as exc:
        _delete_quietly(written)
        raise RegistrationUnavailable(f"{exc} Nothing was registered.") from exc
    try:
        with transaction.atomic():
            version = ModelVersion.objects.create(
                version_name=version_name,
                storage_path=name,
                sha256=sha256,
                serving_graph_path=graph_path,
                serving_graph_sha256=graph_sha256,
                class_names=class_names,
                architecture=architecture,
                preprocessing=prepared.preprocessing,
                thresholds=thresholds,
                accuracy_auroc=auroc,
                published_auroc=published,
                weights_source=weights_source,
                model_card=_registration_card(
                    architecture=architecture,
                    preprocessing=prepared.preprocessing,
                    weights_source=weights_source,
                    published=published,
                    precision=precision_card,
                ),
                notes=notes or "",
                untrained=untrained,
                precision=precision,
                created_by=user if getattr(user, "pk", None) else None,
            )
    except Exception as exc:
        _delete_quietly(written)
        if isinstance(exc, IntegrityError):
            # Lost a race with a concurrent registration of the same name.
            raise RegistrationError(f"A version named {version_name!r} already exists.") from exc
        raise
    logger.info("registered model version %s (%s)", version.version_name, version.short_sha256)
    return version


def _registration_card(
    *, architecture: str, preprocessing: dict, weights_source: dict, published: dict, precision: dict | None
) -> dict:
    """The model card of registered weights: what is known without an evaluation here (a trained or
    evaluated version's card replaces it, learning.evaluation_services)."""
    card = {
        "architecture": architecture,
        "weights_source": weights_source.get("format", "torchvision"),
        "preprocessing": preprocessing,
        "preprocessing_text": preprocessing_describe(preprocessing),
    }
    if published:
        card["published_auroc"] = {**published, "status": PUBLISHED_AUROC_LABEL}
    if precision:
        card["serving_precision"] = precision
    return card


def _checked_graph(
    data: bytes,
    *,
    architecture: str,
    class_names: list[str],
    preprocessing: dict,
    progress: Callable[[str], None] | None = None,
) -> bytes:
    """Loads the weights (WeightsError when they do not fit or would not give finite outputs) and
    returns the ONNX graph the workers serve. In a torch-free process (a serving worker) the load
    and the export run in a child process (engine.weights.serving_graph_from_weights)."""
    return serving_graph_from_weights(
        data,
        architecture=architecture,
        num_classes=len(class_names),
        input_size=int(preprocessing.get("input_size", 224)),
        preprocessing=preprocessing,
        progress=progress,
    )


def _delete_quietly(names: list[str]) -> None:
    for name in names:
        try:
            weights_storage().delete(name)
        except Exception:  # noqa: BLE001 - the caller's error is the one to report
            logger.exception("could not remove %s after a failed registration", name)


def _serving_graph_ensure(version: ModelVersion, data: bytes) -> bool:
    """Writes the version's serving graph from its weights `data` unless the stored one is intact;
    returns whether it wrote one. A version registered before serving graphs were stored, or whose
    graph is missing or damaged, gets it (re)written: it is derived data, and the same weights give
    the same bytes under the same name. An intact stored graph is run on a test image: a version
    registered before outputs were checked is refused here if it would give non-finite results."""
    preprocessing = preprocessing_complete(version.preprocessing or DEFAULT_PREPROCESSING)
    if version.serving_graph_sha256:
        try:
            graph = serving_graph_read(version)
        except WeightsIntegrityError as exc:
            logger.warning("rewriting the serving graph of %s: %s", version.version_name, exc)
        else:
            check_graph_outputs(graph, preprocessing)
            return False
    if version.precision != "fp32":
        # Rewriting it from the weights would serve FP32 under an INT8 label.
        raise WeightsIntegrityError(
            f"The {version.precision.upper()} serving graph of {version.version_name} is missing or "
            "damaged; register the weights again with the same precision."
        )
    graph = _checked_graph(
        data,
        architecture=version.architecture,
        class_names=version.class_names,
        preprocessing=preprocessing,
    )
    path, sha256, _ = serving_graph_save(graph)
    ModelVersion.objects.filter(pk=version.pk).update(serving_graph_path=path, serving_graph_sha256=sha256)
    version.serving_graph_path, version.serving_graph_sha256 = path, sha256
    logger.info("wrote the serving graph of %s (%s)", version.version_name, sha256[:12])
    return True


def model_version_serving_graph_ensure(*, version: ModelVersion) -> bool:
    """The serving graph of a registered version, written from its verified weights if it has none
    or a damaged one (`manage.py bootstrap` runs it for every version after an upgrade). Returns
    whether it wrote one. The weights are always read and checked against their sha256; torch is
    needed only when a graph has to be exported. Raises WeightsIntegrityError, WeightsError,
    WeightsStorageUnavailable or ExportFailed."""
    return _serving_graph_ensure(version, weights_read(version))


def _check_loadable(version: ModelVersion) -> None:
    """Refuses weights that are missing, changed or do not load, and makes sure the version has an
    intact serving graph (see _serving_graph_ensure)."""
    try:
        model_version_serving_graph_ensure(version=version)
    except (WeightsStorageUnavailable, ExportFailed) as exc:
        raise ActivationUnavailable(f"Cannot activate {version.version_name} now: {exc}") from exc
    except (WeightsIntegrityError, WeightsError) as exc:
        raise ActivationError(f"Cannot activate {version.version_name}: {exc}") from exc


def model_version_activate(
    *,
    version: ModelVersion,
    user: AbstractBaseUser | None = None,
    via: str = ActivationEvent.VIA_API,
    reason: str = "",
    override_reason: str = "",
) -> ModelVersion:
    """Makes `version` the one active version and records who did it, when, through which door
    (`via`: admin, command, api or bootstrap) and which version it replaced, in one transaction with
    the rows locked. Refuses weights that do not load or whose stored bytes no longer match the
    recorded sha256. Activating the version that is already active changes and records nothing.
    The evaluation gate (registry.gate.activation_gate) refuses a version never
    evaluated or worse than the active one on the same set, with ActivationGateRefused, unless
    `override_reason` says why (kept in the history); bootstrap's untrained starter is exempt."""
    from registry.gate import activation_gate

    if via not in VIA_VALUES:
        raise ValueError(f"via must be one of {sorted(VIA_VALUES)}, not {via!r}")
    override_reason = (override_reason or "").strip()
    # Exempt: bootstrap's starter (it says "untrained" everywhere) and a rollback to the version
    # that served just before.
    exempt = via in (ActivationEvent.VIA_BOOTSTRAP, ActivationEvent.VIA_MIGRATION) or reason == "rollback"
    gate = None if exempt else activation_gate(version)
    if gate is not None and not override_reason:
        raise ActivationGateRefused(
            f"Refused: {gate} A model-admin may activate it anyway with a written reason."
        )
    # The slow part (read, hash, load) runs before the transaction so the locks are held briefly.
    _check_loadable(version)

    with transaction.atomic():
        # Lock the rows involved so two concurrent activations serialise instead of both winning.
        current = list(ModelVersion.objects.select_for_update().filter(is_active=True))
        try:
            version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        except ModelVersion.DoesNotExist as exc:
            raise ActivationError(f"Cannot activate {version.version_name}: it no longer exists.") from exc
        previous = current[0] if current else None
        if previous is not None and previous.pk == version.pk:
            return version
        ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
        now = timezone.now()
        version.is_active = True
        version.activated_at = now
        version.save(update_fields=["is_active", "activated_at"])
        ActivationEvent.objects.create(
            version=version,
            previous=previous,
            activated_at=now,
            activated_by=user if getattr(user, "pk", None) else None,
            via=via,
            reason=reason[:200] or ("evaluation gate overridden" if gate and override_reason else ""),
            override_reason=override_reason if gate else "",
        )
    logger.info(
        "activated model version %s (%s) via %s, replacing %s",
        version.version_name,
        version.short_sha256,
        via,
        previous.version_name if previous else "nothing",
    )
    return version


def model_version_evaluation_save(
    *,
    version: ModelVersion,
    per_class_auroc: dict[str, float | None],
    mean_auroc: float | None,
    thresholds: dict[str, float] | None = None,
) -> ModelVersion:
    """Stores the outcome of an evaluation (`manage.py evaluate_model`) on the version: its AUROC per
    class and their mean, and, when given, new thresholds for those classes (the others keep theirs).
    An active version serves with the new thresholds from the next request: the cache reads its row
    fresh every time."""
    version.per_class_auroc = per_class_auroc
    version.accuracy_auroc = mean_auroc
    update_fields = ["per_class_auroc", "accuracy_auroc"]
    if thresholds is not None:
        version.thresholds = {**(version.thresholds or {}), **thresholds}
        update_fields.append("thresholds")
    version.save(update_fields=update_fields)
    logger.info("stored the evaluation of %s (mean AUROC %s)", version.version_name, mean_auroc)
    return version


def model_version_rollback_target() -> ModelVersion:
    """The version that was active before the current one, from the history. Raises ActivationError
    when there is none."""
    current = ModelVersion.objects.filter(is_active=True).first()
    if current is None:
        raise ActivationError("No version is active, so there is nothing to roll back from.")
    event = ActivationEvent.objects.filter(version=current).select_related("previous").order_by("-id").first()
    if event is None or event.previous is None:
        raise ActivationError(
            f"{current.version_name} has no previous version in the activation history to roll back to."
        )
    return event.previous


def model_version_rollback(
    *, user: AbstractBaseUser | None = None, via: str = ActivationEvent.VIA_API
) -> ModelVersion:
    """Activates the version that was active before the current one (rolling back twice returns to
    where you started). Raises ActivationError when the history has no previous version, or when its
    weights no longer load."""
    target = model_version_rollback_target()
    return model_version_activate(version=target, user=user, via=via, reason="rollback")
