from registry.models import ModelVersion


def model_version_get_active() -> ModelVersion | None:
    return ModelVersion.objects.filter(is_active=True).first()


def model_version_get_by_ref(ref: str | int) -> ModelVersion:
    """A version by id or by name, as the management commands take it."""
    ref = str(ref)
    if ref.isdecimal():  # not isdigit: int() refuses "²", which isdigit accepts
        return ModelVersion.objects.get(pk=int(ref))
    return ModelVersion.objects.get(version_name=ref)
