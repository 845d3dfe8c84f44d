import contextlib
import json
import time
import uuid

from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.core.management.base import BaseCommand, CommandError

from common.supabase_storage import STORAGE_ERRORS, BucketMissing, SupabaseStorage

ALIASES = ("models", "xray_images")


class CheckFailed(Exception):
    """A step ran but gave the wrong answer."""


class Command(BaseCommand):
    help = (
        "Creates missing Supabase buckets and round-trips a small object through each storage; prints JSON."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-create", action="store_true", help="Report missing buckets instead of creating them."
        )

    def handle(self, *args, **options):
        report = {alias: check_alias(alias, create=not options["no_create"]) for alias in ALIASES}
        ok = all(entry["ok"] for entry in report.values())
        self.stdout.write(json.dumps({"ok": ok, "storages": report}, indent=2))
        if not ok:
            failed = ", ".join(alias for alias, entry in report.items() if not entry["ok"])
            raise CommandError(f"Storage check failed for: {failed} (see the report above).")


def check_alias(alias: str, *, create: bool) -> dict:
    storage = storages[alias]
    entry: dict = {"backend": backend_name(storage)}
    if isinstance(storage, SupabaseStorage):
        entry["bucket"] = storage.bucket
    elif isinstance(storage, FileSystemStorage):
        entry["location"] = str(storage.location)
    entry.update(ok=False, steps={})
    if isinstance(storage, SupabaseStorage) and not _step(entry, "bucket", lambda: _bucket(storage, create)):
        return entry

    name = f"check_storage/{uuid.uuid4().hex}.txt"
    payload = f"lungsite check_storage {name}\n".encode()
    steps = [
        ("save", lambda: _save(storage, name, payload)),
        ("exists", lambda: _expect(storage.exists(name), True, "exists() is False after save")),
        ("read", lambda: _read(storage, name, payload)),
        ("size", lambda: _expect(storage.size(name), len(payload), "wrong size")),
    ]
    if isinstance(storage, SupabaseStorage):
        # Pages never show bucket URLs, but the signed URL is what an operator would hand out.
        steps.append(("url", lambda: _signed_url(storage, name, payload)))
    steps += [
        ("delete", lambda: storage.delete(name)),
        ("gone", lambda: _expect(storage.exists(name), False, "exists() is True after delete")),
    ]
    for step, run in steps:
        if not _step(entry, step, run):
            if "save" in entry["steps"] and step not in ("save", "delete", "gone"):
                with contextlib.suppress(*STORAGE_ERRORS):  # leave no probe object behind
                    storage.delete(name)
            return entry
    entry["ok"] = True
    return entry


def backend_name(storage) -> str:
    if isinstance(storage, SupabaseStorage):
        return "supabase"
    if isinstance(storage, FileSystemStorage):
        return "filesystem"
    return f"{type(storage).__module__}.{type(storage).__qualname__}"


def _step(entry: dict, step: str, run) -> bool:
    started = time.perf_counter()
    try:
        detail = run()
    except (*STORAGE_ERRORS, CheckFailed, ImproperlyConfigured, ValueError) as exc:
        entry["steps"][step] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return False
    result = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
    if isinstance(detail, dict):
        result.update(detail)
    entry["steps"][step] = result
    return True


def _expect(value, expected, message: str) -> None:
    if value != expected:
        raise CheckFailed(f"{message} (got {value!r}, expected {expected!r})")


def _bucket(storage: SupabaseStorage, create: bool) -> dict:
    try:
        state = storage.bucket_ensure() if create else storage.bucket_get()
    except BucketMissing:
        # Not the backend's own hint ("run check_storage"): this is check_storage.
        raise CheckFailed(
            f"bucket {storage.bucket!r} does not exist (run check_storage without --no-create to create it)"
        ) from None
    if state["public"]:
        # Anyone could read analysed images and weights through the public URL.
        raise CheckFailed(f"bucket {storage.bucket!r} is public; make it private in the Supabase dashboard")
    return {"created": state["created"], "public": state["public"]}


def _save(storage, name: str, payload: bytes) -> dict:
    saved = storage.save(name, ContentFile(payload))
    _expect(saved, name, "saved under another name")
    return {"name": saved}


def _read(storage, name: str, payload: bytes) -> None:
    with storage.open(name, "rb") as handle:
        _expect(handle.read(), payload, "read back different bytes")


def _signed_url(storage: SupabaseStorage, name: str, payload: bytes) -> dict:
    url = storage.url(name)
    # Fetched without the service key: the signature alone must grant the read.
    _expect(storage.url_read(url), payload, "the signed URL served different bytes")
    return {"expires_in_s": storage.signed_url_seconds_effective()}
