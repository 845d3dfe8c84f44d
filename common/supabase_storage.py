"""A Django storage backend over Supabase Storage (the `supabase` client's `storage`, i.e. storage3).

One instance per bucket (settings.STORAGES aliases `models` and `xray_images`). Buckets are private:
`url()` returns a short-lived signed URL, and pages serve bytes through authenticated views.

Failures of the Storage service (network, timeouts, auth, 4xx/5xx) surface as one exception type,
`StorageUnavailable`, that the services turn into a 503. A missing object stays `FileNotFoundError`,
as with local files, so callers tell "not there" from "cannot reach Storage".
"""

import mimetypes
import threading
from datetime import datetime

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.core.files.utils import validate_file_name
from django.utils.deconstruct import deconstructible
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException

from common.errors import StorageUnavailable


class BucketMissing(StorageUnavailable):
    """The bucket does not exist (`manage.py check_storage` creates it)."""


# What callers catch around storage calls: our error plus what local file storage raises.
STORAGE_ERRORS = (StorageUnavailable, OSError)

# Guards the lazy client creation (gunicorn threads share the storage instances); module-level so
# instances stay copyable.
_client_lock = threading.Lock()

# Upload retries when a racing writer takes a name between exists() and the upload.
_MAX_NAME_ATTEMPTS = 5


def http_client() -> httpx.Client:
    """The HTTP client every Storage call goes through (tests swap in an httpx.MockTransport)."""
    read = getattr(settings, "LUNGSITE_STORAGE_TIMEOUT", 30)
    return httpx.Client(
        # Retries cover failed connects only (safe for any method); a slow or failed request is
        # not retried, so a 503 comes back within one timeout.
        transport=httpx.HTTPTransport(retries=2),
        timeout=httpx.Timeout(read, connect=5.0, pool=5.0),
        follow_redirects=True,
    )


def _content_type(key: str) -> str:
    # Only types a browser renders need naming; the OS tables guess odd ones for other suffixes
    # (".pt" comes out as a SNES page table), so weights and the rest are plain bytes.
    guessed = mimetypes.guess_type(key)[0] or ""
    if guessed.startswith(("image/", "text/")) or guessed == "application/json":
        return guessed
    return "application/octet-stream"


def _is_missing(exc: StorageApiError) -> bool:
    # Storage answers a missing object with {"statusCode": "404", "error": "not_found"}, sent with
    # HTTP 400 by older servers and 404 by newer ones; storage3 keeps the body's statusCode.
    return str(exc.status) == "404" and exc.code == "not_found"


def _is_duplicate(exc: StorageApiError) -> bool:
    return str(exc.status) == "409" or exc.code == "Duplicate"


def storage_url() -> str:
    """SUPABASE_STORAGE_URL, or where Supabase serves Storage: SUPABASE_URL + /storage/v1."""
    explicit = getattr(settings, "SUPABASE_STORAGE_URL", "").rstrip("/")
    project = getattr(settings, "SUPABASE_URL", "").rstrip("/")
    return explicit or (f"{project}/storage/v1" if project else "")


def _is_wrong_url(exc: StorageApiError) -> bool:
    # Storage's router answers an unknown path with {"message": "Route GET:/x not found"} and
    # Supabase's gateway with {"message": "no Route matched ..."}: the URL is not Storage's.
    text = str(exc.message)
    return str(exc.status) == "404" and (
        "no Route matched" in text or ("Route " in text and "not found" in text)
    )


def _is_wrong_key(exc: StorageApiError) -> bool:
    # A key that is not a valid JWT for this project (InvalidJWT), or one whose role may not use
    # private buckets (the anon key: "new row violates row-level security policy", 403).
    text = f"{exc.code} {exc.message}".lower()
    return str(exc.status) in ("401", "403") or "jwt" in text or "row-level security" in text


def key_role(key: str) -> str:
    """The role a Supabase API key is for: "anon", "service_role", or "" when it does not say.
    Legacy keys are JWTs whose payload names the role (read, not verified: the server verifies);
    newer keys say it in their prefix (sb_publishable_ / sb_secret_)."""
    import base64
    import json

    if key.startswith("sb_publishable_"):
        return "anon"
    if key.startswith("sb_secret_"):
        return "service_role"
    parts = key.split(".")
    if len(parts) != 3:
        return ""
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return ""
    return str(payload.get("role", "")) if isinstance(payload, dict) else ""


def _is_missing_bucket(exc: StorageApiError) -> bool:
    return str(exc.status) == "404" and "bucket" in f"{exc.code} {exc.message}".lower()


@deconstructible(path="common.supabase_storage.SupabaseStorage")
class SupabaseStorage(Storage):
    """Objects in one Supabase Storage bucket, through the service-role key (server side only)."""

    def __init__(self, bucket: str, signed_url_seconds: int | None = None):
        if not bucket:
            raise ImproperlyConfigured("SupabaseStorage needs a bucket name.")
        self.bucket = bucket
        self.signed_url_seconds = signed_url_seconds
        self._client = None
        self._http: httpx.Client | None = None

    # The client --------------------------------------------------------------------------------

    @property
    def client(self):
        """The storage3 client, created on first use: importing settings or running `check` or
        `migrate` never touches the network, and each gunicorn worker builds its own after fork."""
        if self._client is None:
            with _client_lock:
                if self._client is None:
                    self._client = self._create_client()
        return self._client

    def _create_client(self):
        from storage3 import SyncStorageClient

        url, key = storage_url(), getattr(settings, "SUPABASE_KEY", "")
        if not url or not key:
            raise ImproperlyConfigured(
                "SupabaseStorage needs SUPABASE_URL or SUPABASE_STORAGE_URL, and SUPABASE_KEY."
            )
        if key_role(key) == "anon":
            raise StorageUnavailable(
                "SUPABASE_KEY is the project's anon (public) key; lungsite needs the service_role "
                "(secret) key, which may read and write private buckets."
            )
        self._http = http_client()
        headers = {"apikey": key, "Authorization": f"Bearer {key}"}
        return SyncStorageClient(url.rstrip("/") + "/", headers, http_client=self._http)

    def _files(self):
        return self.client.from_(self.bucket)

    def _call(self, action: str, name: str, func, *args, missing_ok: bool = False, **kwargs):
        """Runs one storage3 call, turning its failures into FileNotFoundError (a missing object,
        where `missing_ok`) or StorageUnavailable (everything else)."""
        where = f"{self.bucket}/{name}" if name else self.bucket
        try:
            return func(*args, **kwargs)
        except StorageApiError as exc:
            if missing_ok and _is_missing(exc):
                raise FileNotFoundError(f"No object {where} in Supabase Storage.") from exc
            if _is_wrong_url(exc):
                raise StorageUnavailable(
                    f"No Supabase Storage at {storage_url()} (the server answered "
                    f"404 route not found to {action} {where}): check SUPABASE_STORAGE_URL, or "
                    "SUPABASE_URL whose /storage/v1 it defaults to."
                ) from exc
            if _is_missing_bucket(exc):
                raise BucketMissing(
                    f"Supabase Storage bucket {self.bucket!r} does not exist "
                    "(run `manage.py check_storage` to create it)."
                ) from exc
            if _is_wrong_key(exc):
                raise StorageUnavailable(
                    f"Supabase Storage refused SUPABASE_KEY to {action} {where} ({exc.status} "
                    f"{exc.code}: {exc.message}): set the project's service_role (secret) key."
                ) from exc
            raise StorageUnavailable(
                f"Supabase Storage refused to {action} {where}: {exc.status} {exc.code}: {exc.message}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise StorageUnavailable(f"Supabase Storage timed out on {action} {where}.") from exc
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"Supabase Storage is unreachable ({action} {where}): {exc}") from exc
        except (StorageException, ValueError) as exc:
            # StorageException: storage3's own failures; ValueError: a reply that is not the JSON
            # storage3 expects (pydantic's ValidationError is a ValueError), e.g. a proxy's HTML page.
            raise StorageUnavailable(f"Supabase Storage failed to {action} {where}: {exc}") from exc

    @staticmethod
    def _key(name: str) -> str:
        """The object key for a storage name; dot segments would escape the folder (storage3
        refuses them too, with a ValueError that would read as an outage)."""
        key = str(name).replace("\\", "/").lstrip("/")
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise SuspiciousFileOperation(f"Invalid object name {name!r}.")
        return key

    # Storage API -------------------------------------------------------------------------------

    def _open(self, name: str, mode: str = "rb"):
        if any(flag in mode for flag in "wax+"):
            raise ValueError(f"SupabaseStorage opens objects for reading only, not mode {mode!r}.")
        key = self._key(name)
        data = self._call("download", key, self._files().download, key, missing_ok=True)
        return ContentFile(data, name=name)

    def _save(self, name: str, content) -> str:
        if hasattr(content, "seek"):
            content.seek(0)
        data = content.read()
        if isinstance(data, str):
            data = data.encode()
        for _attempt in range(_MAX_NAME_ATTEMPTS):
            key = self._key(name)
            content_type = _content_type(key)
            try:
                # x-upsert false: Storage refuses to replace an object (409 Duplicate) rather than
                # overwriting it, like the exclusive create of FileSystemStorage.
                self._files().upload(key, data, {"content-type": content_type, "x-upsert": "false"})
                return key
            except StorageApiError as exc:
                if not _is_duplicate(exc):
                    return self._call("upload", key, _reraise, exc)
            except Exception as exc:  # noqa: BLE001 - mapped to StorageUnavailable just below
                return self._call("upload", key, _reraise, exc)
            # The name is taken: pick another, as Django's FileSystemStorage does when its
            # exclusive create fails.
            name = Storage.get_available_name(self, name)
        raise StorageUnavailable(
            f"Supabase Storage: no free name near {self.bucket}/{name} after {_MAX_NAME_ATTEMPTS} tries."
        )

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        """The name as given: the upload refuses a taken name (x-upsert false) and _save then picks
        another, so no lookup precedes every write (on a hung Storage it cost a timeout of its own)."""
        validate_file_name(name, allow_relative_path=True)
        return name

    def exists(self, name: str) -> bool:
        key = self._key(name)
        # storage3's exists() reads the object's info (one small GET) and is False only for a
        # missing object; a missing bucket or a refused key raise.
        return bool(self._call("check", key, self._files().exists, key))

    def delete(self, name: str) -> None:
        key = self._key(name)
        # Removing a missing object is not an error (Storage answers 200 with an empty list).
        self._call("delete", key, self._files().remove, [key])

    def _info(self, name: str) -> dict:
        key = self._key(name)
        return self._call("read info of", key, self._files().info, key, missing_ok=True)

    def size(self, name: str) -> int:
        size = self._info(name).get("size")
        if size is None:
            raise StorageUnavailable(f"Supabase Storage gave no size for {self.bucket}/{name}.")
        return int(size)

    def get_modified_time(self, name: str) -> datetime:
        info = self._info(name)
        stamp = info.get("last_modified") or info.get("updated_at") or info.get("created_at")
        if not stamp:
            raise StorageUnavailable(f"Supabase Storage gave no time for {self.bucket}/{name}.")
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if not settings.USE_TZ:
            from django.utils import timezone

            moment = timezone.make_naive(moment)
        return moment

    def url(self, name: str) -> str:
        """A signed URL that expires after LUNGSITE_SIGNED_URL_SECONDS (default 300): the buckets
        are private, and a URL handed out must stop working soon."""
        key = self._key(name)
        seconds = self.signed_url_seconds_effective()
        signed = self._call("sign", key, self._files().create_signed_url, key, seconds, missing_ok=True)
        url = signed.get("signedURL") or signed.get("signedUrl")
        if not url:
            raise StorageUnavailable(f"Supabase Storage returned no signed URL for {self.bucket}/{key}.")
        return url

    def signed_url_seconds_effective(self) -> int:
        return int(self.signed_url_seconds or getattr(settings, "LUNGSITE_SIGNED_URL_SECONDS", 300))

    def url_read(self, url: str) -> bytes:
        """The bytes behind a signed URL, fetched with no key (what `check_storage` verifies)."""
        self.client  # noqa: B018 - creates the HTTP client on first use
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"Supabase Storage is unreachable (signed URL): {exc}") from exc
        if response.status_code != 200:
            raise StorageUnavailable(
                f"Supabase Storage answered {response.status_code} to a signed URL: {response.text[:200]}"
            )
        return response.content

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        prefix = str(path).replace("\\", "/").strip("/")
        directories, files = [], []
        offset, page = 0, 1000
        while True:
            entries = self._call(
                "list",
                prefix,
                self._files().list,
                prefix,
                {"limit": page, "offset": offset, "sortBy": {"column": "name", "order": "asc"}},
            )
            for entry in entries:
                # Folders come back as entries without an id.
                (files if entry.get("id") else directories).append(entry["name"])
            if len(entries) < page:
                return directories, files
            offset += page

    # Buckets (used by `manage.py check_storage`) ----------------------------------------------

    def bucket_get(self) -> dict:
        """{"bucket", "created": False, "public"}; StorageUnavailable when it is missing."""
        bucket = self._call("read bucket", "", self.client.get_bucket, self.bucket)
        return {"bucket": self.bucket, "created": False, "public": bool(bucket.public)}

    def bucket_ensure(self) -> dict:
        """Creates the bucket, private, when it is missing. Returns {"bucket", "created", "public"}."""
        storage = self.client
        try:
            bucket = storage.get_bucket(self.bucket)
            return {"bucket": self.bucket, "created": False, "public": bool(bucket.public)}
        except StorageApiError as exc:
            if str(exc.status) != "404" or _is_wrong_url(exc):
                return self._call("read bucket", "", _reraise, exc)
        except Exception as exc:  # noqa: BLE001 - mapped to StorageUnavailable just below
            return self._call("read bucket", "", _reraise, exc)
        try:
            storage.create_bucket(self.bucket, options={"public": False})
        except StorageApiError as exc:
            if not _is_duplicate(exc):  # a concurrent creator won: fine
                return self._call("create bucket", "", _reraise, exc)
        except Exception as exc:  # noqa: BLE001 - mapped to StorageUnavailable just below
            return self._call("create bucket", "", _reraise, exc)
        return {"bucket": self.bucket, "created": True, "public": False}


def _reraise(exc: BaseException):
    raise exc
