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
from django.utils.deconstruct import deconstructible
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException


class StorageUnavailable(Exception):
    """Supabase Storage could not do what was asked (unreachable, refused, or failed)."""


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


def _is_missing_bucket(exc: StorageApiError) -> bool:
    return str(exc.status) == "404" and "bucket" in f"{exc.code} {exc.message}".lower()


@deconstructible(path="lungsite.supabase_storage.SupabaseStorage")
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
        """The supabase client, created on first use: importing settings or running `check` or
        `migrate` never touches the network, and each gunicorn worker builds its own after fork."""
        if self._client is None:
            with _client_lock:
                if self._client is None:
                    self._client = self._create_client()
        return self._client

    def _create_client(self):
        from supabase import create_client
        from supabase.lib.client_options import SyncClientOptions

        url, key = getattr(settings, "SUPABASE_URL", ""), getattr(settings, "SUPABASE_KEY", "")
        if not url or not key:
            raise ImproperlyConfigured("SupabaseStorage needs SUPABASE_URL and SUPABASE_KEY.")
        self._http = http_client()
        try:
            return create_client(url, key, options=SyncClientOptions(httpx_client=self._http))
        except Exception as exc:  # noqa: BLE001 - supabase raises its own types for a bad URL/key
            raise ImproperlyConfigured(f"Cannot create the Supabase client for {url}: {exc}") from exc

    def _files(self):
        return self.client.storage.from_(self.bucket)

    def _call(self, action: str, name: str, func, *args, missing_ok: bool = False, **kwargs):
        """Runs one storage3 call, turning its failures into FileNotFoundError (a missing object,
        where `missing_ok`) or StorageUnavailable (everything else)."""
        where = f"{self.bucket}/{name}" if name else self.bucket
        try:
            return func(*args, **kwargs)
        except StorageApiError as exc:
            if missing_ok and _is_missing(exc):
                raise FileNotFoundError(f"No object {where} in Supabase Storage.") from exc
            if _is_missing_bucket(exc):
                raise StorageUnavailable(
                    f"Supabase Storage bucket {self.bucket!r} does not exist "
                    "(run `manage.py check_storage` to create it)."
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
            # Someone wrote this name after exists() said it was free: pick another, as Django's
            # FileSystemStorage does when its exclusive create fails.
            name = self.get_available_name(name)
        raise StorageUnavailable(
            f"Supabase Storage: no free name near {self.bucket}/{name} after {_MAX_NAME_ATTEMPTS} tries."
        )

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
        bucket = self._call("read bucket", "", self.client.storage.get_bucket, self.bucket)
        return {"bucket": self.bucket, "created": False, "public": bool(bucket.public)}

    def bucket_ensure(self) -> dict:
        """Creates the bucket, private, when it is missing. Returns {"bucket", "created", "public"}."""
        storage = self.client.storage
        try:
            bucket = storage.get_bucket(self.bucket)
            return {"bucket": self.bucket, "created": False, "public": bool(bucket.public)}
        except StorageApiError as exc:
            if str(exc.status) != "404":
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
