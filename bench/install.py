"""A throwaway lungsite installation for the benchmark: a temp data folder (SQLite + local storage),
migrated, with the starter model, a second version to swap to, and a clinician and a model-admin
with API tokens.

Nothing here touches a configured production database or Supabase project: DATABASE_URL and
SUPABASE_* are dropped from the environment unless `--database-url` is passed explicitly.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LUNGSITE_SHARED_DATA", ROOT.parent / "shared" / "data"))
SECOND_VERSION_NAME = "bench-second-densenet121"


@dataclass
class Installation:
    data_dir: Path
    env: dict  # the environment a gunicorn server for this installation needs
    starter_id: int
    second_id: int
    token: str
    username: str
    admin_token: str  # a model-admin's: the swaps activate through the API, as integrators do


def environment(data_dir: Path, *, database_url: str | None, threads: int) -> dict:
    """The variables for the in-process Django and for the gunicorn server, set in os.environ too."""
    for name in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_KEY"):
        os.environ.pop(name, None)
    values = {
        "LUNGSITE_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "lungsite.settings",
        "DJANGO_DEBUG": "0",  # production behaviour: no query log kept per request
        "DJANGO_HTTPS": "0",  # plain HTTP on loopback, no redirect to https
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "LUNGSITE_PREDICTION_RATE": "1000000/minute",  # the throttle is not what is measured
        "LUNGSITE_LOG_LEVEL": "WARNING",
        "LUNGSITE_TORCH_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "LUNGSITE_ACTIVATION_GATE": "0",  # the swapped versions are throwaway, never evaluated
        "LUNGSITE_SHADOW_RATE": "0",  # no shadow version: nothing to measure there
    }
    if database_url:
        values["DATABASE_URL"] = database_url
    os.environ.update(values)
    return values


def install(*, database_url: str | None, threads: int, log) -> Installation:
    """Migrates, bootstraps the starter, registers a second version (the starter's weights with a
    different classifier), and makes a clinician with a token. Returns what the phases need."""
    data_dir = Path(tempfile.mkdtemp(prefix="lungsite-bench-"))
    env = environment(data_dir, database_url=database_url, threads=threads)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    import django

    django.setup()
    import io

    import torch
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from registry.management.commands.bootstrap import STARTER_VERSION_NAME, starter_weights
    from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
    from registry.services import model_version_register

    log("migrating a fresh database in %s", data_dir)
    call_command("migrate", verbosity=0, interactive=False)
    call_command("bootstrap", stdout=io.StringIO())
    starter = ModelVersion.objects.get(version_name=STARTER_VERSION_NAME)

    second = ModelVersion.objects.filter(version_name=SECOND_VERSION_NAME).first()
    if second is None:
        state = torch.load(io.BytesIO(starter_weights()), weights_only=True)
        generator = torch.Generator().manual_seed(1)
        state["classifier.weight"] = torch.randn(state["classifier.weight"].shape, generator=generator) * 0.05
        buffer = io.BytesIO()
        torch.save(state, buffer)
        second = model_version_register(
            data=buffer.getvalue(),
            version_name=SECOND_VERSION_NAME,
            class_names=DEFAULT_CLASS_NAMES,
            untrained=True,
            notes="benchmark: the starter's features with another classifier",
        )

    user, _ = get_user_model().objects.get_or_create(username="bench-clinician")
    user.groups.add(Group.objects.get(name="clinician"))
    token, _ = Token.objects.get_or_create(user=user)
    admin, _ = get_user_model().objects.get_or_create(
        username="bench-model-admin", defaults={"is_staff": True}
    )
    admin.groups.add(Group.objects.get(name="model-admin"))
    admin_token, _ = Token.objects.get_or_create(user=admin)
    return Installation(
        data_dir=data_dir,
        env=env,
        starter_id=starter.pk,
        second_id=second.pk,
        token=token.key,
        username=user.username,
        admin_token=admin_token.key,
    )


def collectstatic(log) -> float:
    """Collected static files (gunicorn.conf.py refuses to start without them when DEBUG is off).
    Returns the seconds it took."""
    import io
    import time

    from django.core.management import call_command

    started = time.perf_counter()
    call_command("collectstatic", interactive=False, verbosity=0, stdout=io.StringIO())
    seconds = time.perf_counter() - started
    log("collectstatic: %.1f s", seconds)
    return seconds


def latency_images(count: int) -> list[Path]:
    """The first `count` NIH PNGs (1024x1024, 8-bit; sorted, so every run uses the same ones)."""
    folder = SHARED_DATA / "nih_reproduce_chexnet" / "images"
    if not folder.is_dir():
        raise SystemExit(f"real images not found: {folder} (the ../shared/data folder is absent)")
    images = sorted(folder.glob("*.png"))[:count]
    if not images:
        raise SystemExit(f"no PNG images in {folder}")
    return images


def format_samples() -> dict[str, Path]:
    """One file per input format, for the decode profile (those present)."""
    candidates = {
        "png_1024_l8": SHARED_DATA / "nih_reproduce_chexnet" / "images" / "00000075_000.png",
        "png_16bit": SHARED_DATA / "bob_med_tb" / "16bits.png",
        "jpeg": SHARED_DATA / "kermany_pneumonia_model_package" / "person1946_bacteria_4874.jpeg",
        "dicom_dx_1024": SHARED_DATA / "nhsx_nccid" / "sample_nhsx_dx.dcm",
        "dicom_cr_1955x1841": SHARED_DATA / "pydicom_data" / "RG1_UNCR.dcm",
    }
    found = {name: path for name, path in candidates.items() if path.exists()}
    if "dicom_dx_1024" not in found:
        dx = sorted((SHARED_DATA / "nhsx_nccid").glob("*.dcm"))
        dx = [p for p in dx if "non_chest" not in p.name]
        if dx:
            found["dicom_dx_1024"] = dx[0]
    return found
