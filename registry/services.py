import logging

from django.db import transaction
from django.utils import timezone

from inference.weights import WeightsError, load_model
from registry.models import DEFAULT_PREPROCESSING, ModelVersion
from registry.storage import WeightsIntegrityError, weights_read, weights_save, weights_storage

logger = logging.getLogger(__name__)


class RegistrationError(Exception):
    """A version that was refused; the message says which check failed."""


class ActivationError(Exception):
    """A version that cannot be activated; the message says why."""


def model_version_register(
    *,
    data: bytes,
    version_name: str,
    class_names: list[str],
    architecture: str = "densenet121",
    preprocessing: dict | None = None,
    thresholds: dict | None = None,
    auroc: float | None = None,
    notes: str = "",
    untrained: bool = False,
    user=None,
) -> ModelVersion:
    """Checks a weights file, stores it by content and writes its row. A refused file leaves no row
    and no stored object."""
    version_name = version_name.strip()
    if not version_name:
        raise RegistrationError("A version name is required.")
    if ModelVersion.objects.filter(version_name=version_name).exists():
        raise RegistrationError(f"A version named {version_name!r} already exists.")
    if not class_names or len(set(class_names)) != len(class_names):
        raise RegistrationError("Class names must be a non-empty list without repeats.")
    try:
        load_model(data, architecture=architecture, num_classes=len(class_names))
    except WeightsError as exc:
        raise RegistrationError(str(exc)) from exc

    name, sha256, created = weights_save(data)
    try:
        with transaction.atomic():
            return ModelVersion.objects.create(
                version_name=version_name,
                storage_path=name,
                sha256=sha256,
                class_names=list(class_names),
                architecture=architecture,
                preprocessing=preprocessing or dict(DEFAULT_PREPROCESSING),
                thresholds=thresholds or {},
                accuracy_auroc=auroc,
                notes=notes,
                untrained=untrained,
                created_by=user if getattr(user, "pk", None) else None,
            )
    except Exception:
        if created:
            weights_storage().delete(name)
        raise


def model_version_activate(*, version: ModelVersion, user=None) -> ModelVersion:
    """Makes `version` the one active version, in one transaction. Refuses weights that do not
    load or whose stored bytes no longer match the recorded sha256."""
    try:
        data = weights_read(version)
        load_model(data, architecture=version.architecture, num_classes=len(version.class_names))
    except (WeightsIntegrityError, WeightsError) as exc:
        raise ActivationError(f"Cannot activate {version.version_name}: {exc}") from exc

    with transaction.atomic():
        # Lock the rows involved so two concurrent activations serialise instead of both winning.
        list(ModelVersion.objects.select_for_update().filter(is_active=True))
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
        version.is_active = True
        version.activated_at = timezone.now()
        version.save(update_fields=["is_active", "activated_at"])
    logger.info("activated model version %s (%s)", version.version_name, version.short_sha256)
    return version
