import json
import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from registry.services import (
    RegistrationError,
    model_version_activate,
    model_version_register,
    model_version_serving_graph_ensure,
)

STARTER_VERSION_NAME = "starter-untrained-densenet121"
STARTER_SEED = 0


def starter_weights() -> bytes:
    import torch

    from engine.architectures import architecture_get
    from engine.weights import save_state_dict

    torch.manual_seed(STARTER_SEED)
    return save_state_dict(architecture_get("densenet121").build(len(DEFAULT_CLASS_NAMES)))


class Command(BaseCommand):
    help = (
        "Registers the untrained starter model on an empty registry, writes the serving graph of any "
        "version registered before graphs were stored, and creates the admin user."
    )

    def handle(self, *args, **options):
        report = {"starter_model": None, "serving_graphs_written": [], "admin_user": None}
        if not ModelVersion.objects.exists():
            version = self._starter()
            if version is not None:
                model_version_activate(version=version, via="bootstrap")
                report["starter_model"] = {
                    "id": version.pk,
                    "version_name": version.version_name,
                    "sha256": version.sha256,
                    "created": True,
                }
        report["serving_graphs_written"] = self._serving_graphs()
        username = os.environ.get("LUNGSITE_ADMIN_USERNAME")
        password = os.environ.get("LUNGSITE_ADMIN_PASSWORD")
        if username and password:
            report["admin_user"] = self._admin(username, password)
        self.stdout.write(json.dumps(report))

    def _serving_graphs(self) -> list[dict]:
        """Versions registered before serving graphs were stored get theirs now, so that workers
        open them without torch (the active one first). A version whose weights cannot be read is
        reported and left as it is: activating it would be refused anyway."""
        written = []
        for version in ModelVersion.objects.filter(serving_graph_sha256="").order_by("-is_active", "id"):
            entry = {"id": version.pk, "version_name": version.version_name}
            try:
                entry["written"] = model_version_serving_graph_ensure(version=version)
            except Exception as exc:  # noqa: BLE001 - reported; bootstrap goes on with the others
                entry["written"], entry["error"] = False, str(exc)
            written.append(entry)
        return written

    def _starter(self) -> ModelVersion | None:
        try:
            return model_version_register(
                data=starter_weights(),
                version_name=STARTER_VERSION_NAME,
                class_names=DEFAULT_CLASS_NAMES,
                untrained=True,
                progress=self.stderr.write,
                notes=(
                    "UNTRAINED: a DenseNet121 with random weights (seed "
                    f"{STARTER_SEED}). Its scores carry no medical meaning; register real weights."
                ),
            )
        except RegistrationError:
            # Two release steps ran bootstrap at once and the other registered the starter first:
            # the registry is no longer empty, which is all this one wanted.
            if ModelVersion.objects.filter(version_name=STARTER_VERSION_NAME).exists():
                return None
            raise

    @transaction.atomic
    def _admin(self, username: str, password: str) -> dict:
        user, created = get_user_model().objects.get_or_create(username=username)
        changed = created or not (user.is_superuser and user.is_staff and user.check_password(password))
        if changed:
            user.is_superuser = user.is_staff = user.is_active = True
            user.set_password(password)
            user.save()
        return {"username": username, "created": created, "updated": changed and not created}
