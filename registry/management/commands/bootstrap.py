import json
import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from registry.services import RegistrationError, model_version_activate, model_version_register

STARTER_VERSION_NAME = "starter-untrained-densenet121"
STARTER_SEED = 0


def starter_weights() -> bytes:
    import torch

    from inference.weights import build_model, save_state_dict

    torch.manual_seed(STARTER_SEED)
    return save_state_dict(build_model("densenet121", len(DEFAULT_CLASS_NAMES)))


class Command(BaseCommand):
    help = "Registers the untrained starter model on an empty registry and creates the admin user."

    def handle(self, *args, **options):
        report = {"starter_model": None, "admin_user": None}
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
        username = os.environ.get("LUNGSITE_ADMIN_USERNAME")
        password = os.environ.get("LUNGSITE_ADMIN_PASSWORD")
        if username and password:
            report["admin_user"] = self._admin(username, password)
        self.stdout.write(json.dumps(report))

    def _starter(self) -> ModelVersion | None:
        try:
            return model_version_register(
                data=starter_weights(),
                version_name=STARTER_VERSION_NAME,
                class_names=DEFAULT_CLASS_NAMES,
                untrained=True,
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
