"""An in-process fake of the Supabase Storage REST endpoints that lungsite uses, for httpx.MockTransport.

It answers as the real server (supabase/storage) does: JSON error bodies
{"statusCode": "<code>", "error": ..., "message": ...}, sent with HTTP 400 for 4xx errors (what the
server's error handler does unless the error carries its own status), or with the real status when
`legacy_status=False`.
"""

import json
import secrets
import uuid
from datetime import UTC, datetime
from urllib.parse import unquote

import httpx

URL = "https://fake-project.supabase.co"
KEY = "fake-service-role-key"
PREFIX = "/storage/v1/"


class FakeSupabaseStorage:
    def __init__(self, *, legacy_status: bool = True, key: str = KEY):
        self.legacy_status = legacy_status
        self.key = key
        self.buckets: dict[str, dict] = {}
        self.objects: dict[tuple[str, str], dict] = {}
        self.tokens: dict[str, tuple[str, str]] = {}
        self.requests: list[httpx.Request] = []
        # Fault injection: an exception to raise for every request, or a status to answer with.
        self.raise_exc: Exception | None = None
        self.fail_status: int | None = None

    # Helpers for tests -------------------------------------------------------------------------

    def add_bucket(self, bucket_id: str, *, public: bool = False) -> None:
        now = _now()
        self.buckets[bucket_id] = {
            "id": bucket_id,
            "name": bucket_id,
            "owner": "",
            "public": public,
            "created_at": now,
            "updated_at": now,
            "file_size_limit": None,
            "allowed_mime_types": None,
        }

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.url.path for r in self.requests if method is None or r.method == method]

    # Dispatch ----------------------------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.raise_exc is not None:
            raise self.raise_exc
        if self.fail_status is not None:
            return httpx.Response(self.fail_status, text="<html>upstream unavailable</html>")
        path = unquote(request.url.path)
        if not path.startswith(PREFIX):
            return httpx.Response(404, json={"message": "no Route matched", "request_id": "x"})
        parts = path[len(PREFIX) :].split("/")
        if parts[:2] == ["object", "sign"] and request.method == "GET":
            return self.signed_get(parts[2], "/".join(parts[3:]), request.url.params.get("token", ""))
        if request.headers.get("apikey") != self.key or request.headers.get("authorization") != (
            f"Bearer {self.key}"
        ):
            return self.error(403, "Unauthorized", "Invalid Compact JWS", "InvalidJWT")
        method = request.method
        if parts[0] == "bucket":
            if method == "GET" and len(parts) == 1:
                return httpx.Response(200, json=list(self.buckets.values()))
            if method == "GET":
                return self.bucket_get(parts[1])
            if method == "POST":
                return self.bucket_create(json.loads(request.content))
        if parts[0] == "object":
            rest = parts[1:]
            if rest[0] == "info" and method == "GET":
                rest = rest[2:] if rest[1] == "authenticated" else rest[1:]
                return self.info(rest[0], "/".join(rest[1:]))
            if rest[0] == "sign" and method == "POST":
                return self.sign(rest[1], "/".join(rest[2:]), json.loads(request.content))
            if rest[0] == "list" and method == "POST":
                return self.list_objects(rest[1], json.loads(request.content))
            if rest[0] == "authenticated" and method == "GET":
                return self.download(rest[1], "/".join(rest[2:]))
            if method == "GET":
                return self.download(rest[0], "/".join(rest[1:]))
            if method == "POST":
                return self.upload(rest[0], "/".join(rest[1:]), request)
            if method == "DELETE" and len(rest) == 1:
                return self.remove(rest[0], json.loads(request.content))
        return httpx.Response(404, json={"message": f"Route {method}:{path} not found", "statusCode": 404})

    def error(self, status: int, error: str, message: str, code: str | None = None) -> httpx.Response:
        body = {"statusCode": str(status), "error": error, "message": message}
        if code:
            body["code"] = code
        return httpx.Response(400 if self.legacy_status and status < 500 else status, json=body)

    def no_bucket(self) -> httpx.Response:
        return self.error(404, "Bucket not found", "Bucket not found", "NoSuchBucket")

    def no_object(self) -> httpx.Response:
        return self.error(404, "not_found", "Object not found", "NoSuchKey")

    # Endpoints ---------------------------------------------------------------------------------

    def bucket_get(self, bucket_id: str) -> httpx.Response:
        if bucket_id not in self.buckets:
            return self.no_bucket()
        return httpx.Response(200, json=self.buckets[bucket_id])

    def bucket_create(self, body: dict) -> httpx.Response:
        if body["id"] in self.buckets:
            return self.error(409, "Duplicate", "The resource already exists", "BucketAlreadyExists")
        self.add_bucket(body["id"], public=bool(body.get("public", False)))
        return httpx.Response(200, json={"name": body["id"]})

    def upload(self, bucket: str, key: str, request: httpx.Request) -> httpx.Response:
        if bucket not in self.buckets:
            return self.no_bucket()
        upsert = request.headers.get("x-upsert", "false") == "true"
        if (bucket, key) in self.objects and not upsert:
            return self.error(409, "Duplicate", "The resource already exists", "KeyAlreadyExists")
        data, content_type = _multipart_file(request)
        now = _now()
        self.objects[(bucket, key)] = {
            "id": str(uuid.uuid4()),
            "data": data,
            "content_type": content_type,
            "created_at": now,
            "updated_at": now,
        }
        return httpx.Response(200, json={"Key": f"{bucket}/{key}", "Id": self.objects[(bucket, key)]["id"]})

    def download(self, bucket: str, key: str) -> httpx.Response:
        if bucket not in self.buckets:
            return self.no_bucket()
        obj = self.objects.get((bucket, key))
        if obj is None:
            return self.no_object()
        return httpx.Response(200, content=obj["data"], headers={"content-type": obj["content_type"]})

    def info(self, bucket: str, key: str) -> httpx.Response:
        if bucket not in self.buckets:
            return self.no_bucket()
        obj = self.objects.get((bucket, key))
        if obj is None:
            return self.no_object()
        return httpx.Response(
            200,
            json={
                "id": obj["id"],
                "name": key,
                "version": obj["id"],
                "bucket_id": bucket,
                "size": len(obj["data"]),
                "content_type": obj["content_type"],
                "cache_control": "max-age=3600",
                "etag": '"etag"',
                "metadata": {},
                "last_modified": obj["updated_at"],
                "created_at": obj["created_at"],
            },
        )

    def remove(self, bucket: str, body: dict) -> httpx.Response:
        if bucket not in self.buckets:
            return self.no_bucket()
        removed = []
        for key in body["prefixes"]:
            obj = self.objects.pop((bucket, key), None)
            if obj is not None:
                removed.append({"name": key, "bucket_id": bucket, "id": obj["id"]})
        return httpx.Response(200, json=removed)

    def sign(self, bucket: str, key: str, body: dict) -> httpx.Response:
        if bucket not in self.buckets:
            return self.no_bucket()
        if (bucket, key) not in self.objects:
            return self.no_object()
        assert int(body["expiresIn"]) > 0
        token = secrets.token_urlsafe(16)
        self.tokens[token] = (bucket, key)
        return httpx.Response(200, json={"signedURL": f"/object/sign/{bucket}/{key}?token={token}"})

    def signed_get(self, bucket: str, key: str, token: str) -> httpx.Response:
        if self.tokens.get(token) != (bucket, key):
            return self.error(400, "InvalidJWT", "invalid signature", "InvalidJWT")
        return self.download(bucket, key)

    def list_objects(self, bucket: str, body: dict) -> httpx.Response:
        if bucket not in self.buckets:
            return self.no_bucket()
        prefix = body.get("prefix", "").strip("/")
        prefix = f"{prefix}/" if prefix else ""
        search = body.get("search", "")
        files, folders = {}, set()
        for (obj_bucket, key), obj in sorted(self.objects.items()):
            if obj_bucket != bucket or not key.startswith(prefix):
                continue
            head, _, tail = key[len(prefix) :].partition("/")
            if not head.lower().startswith(search.lower()):
                continue
            if tail:
                folders.add(head)
            else:
                files[head] = obj
        entries = [{"name": name, "id": None, "metadata": None} for name in sorted(folders)]
        entries += [
            {
                "name": name,
                "id": obj["id"],
                "updated_at": obj["updated_at"],
                "created_at": obj["created_at"],
                "metadata": {"size": len(obj["data"]), "mimetype": obj["content_type"]},
            }
            for name, obj in sorted(files.items())
        ]
        offset, limit = int(body.get("offset", 0)), int(body.get("limit", 100))
        return httpx.Response(200, json=entries[offset : offset + limit])


def use_fake(settings, monkeypatch, fake: FakeSupabaseStorage) -> FakeSupabaseStorage:
    """Points SUPABASE_* and both storage aliases at `fake` (as settings.py does when the variables
    are set) and routes the backend's HTTP client through it."""
    from common import supabase_storage

    settings.SUPABASE_URL = URL
    settings.SUPABASE_KEY = KEY
    settings.STORAGES = {
        **settings.STORAGES,
        "models": {"BACKEND": "common.supabase_storage.SupabaseStorage", "OPTIONS": {"bucket": "models"}},
        "xray_images": {
            "BACKEND": "common.supabase_storage.SupabaseStorage",
            "OPTIONS": {"bucket": "xray-images"},
        },
    }
    monkeypatch.setattr(supabase_storage, "http_client", lambda: httpx.Client(transport=fake.transport()))
    return fake


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _multipart_file(request: httpx.Request) -> tuple[bytes, str]:
    """The `file` part of a multipart/form-data body: (bytes, its content type)."""
    content_type = request.headers["content-type"]
    boundary = content_type.split("boundary=")[1].encode()
    for part in request.read().split(b"--" + boundary):
        head, sep, body = part.partition(b"\r\n\r\n")
        if not sep or b'name="file"' not in head:
            continue
        part_type = "application/octet-stream"
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("content-type:"):
                part_type = line.split(":", 1)[1].strip()
        return body.removesuffix(b"\r\n"), part_type
    raise AssertionError("upload without a file part")
