"""What a submission holds, one member at a time: each uploaded file, and each file inside an
uploaded ZIP (one level), either accepted (its bytes handed to the caller's `stage` function as a
file, never all in memory) or refused with a code and a message. No Django, no storage here.

A ZIP member is judged from its directory entry first (name, encryption, declared size, and how far
it claims to inflate: real X-rays inside a ZIP barely compress, a member that inflates a hundred
times is a bomb), then from its first bytes (it must look like an image), and only then inflated,
in chunks, with every limit checked while inflating whatever the directory claimed. A member
inside a member is never opened (nested archives). The peak memory is one chunk plus a small
spooled buffer; what is staged is bounded by the job's and the user's budgets."""

from __future__ import annotations

import hashlib
import posixpath
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_CHUNK = 1 << 20
# Bytes kept in memory before a member being read spills to a temporary file.
_SPOOL_BYTES = 1 << 20
# A member may claim (and is held to) at most this many inflated bytes per compressed byte once it
# is past _RATIO_FROM bytes: PNG and JPEG do not compress, uncompressed 16-bit DICOM ~2-5x.
MAX_RATIO = 50
_RATIO_FROM = 1 << 20


NESTED = "is an archive inside the submission; nested archives are not opened"
NOT_AN_IMAGE = "is not an image this service reads (PNG, JPEG or DICOM)"
PAST_BUDGET = "is past the total size allowed for one job (or for your jobs still waiting)"


class ArchiveRefused(Exception):
    """The submission as a whole cannot be read (not a ZIP, a broken directory, too many entries)."""


@dataclass(frozen=True)
class Limits:
    member_bytes: int  # one image, inflated
    total_bytes: int  # all accepted images together, inflated (the job's and the user's room)
    images: int  # accepted images in one job


@dataclass
class Member:
    name: str
    size: int = 0  # bytes read (inflated)
    sha256: str = ""
    staged: str = ""  # where `stage` put the bytes; "" when refused
    code: str = ""  # why it was refused, as an API error code
    reason: str = ""  # why it was refused, in words ("is empty (0 bytes)")

    @property
    def accepted(self) -> bool:
        return bool(self.staged)


def looks_like_image(head: bytes) -> bool:
    """PNG, JPEG, DICOM with its preamble, or an ACR-NEMA style DICOM (as engine.decode reads them)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return True
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3:4] == b"\x00"


def is_zip(head: bytes) -> bool:
    return head[:4] in _ZIP_MAGIC


def unsafe_name(name: str) -> str:
    """Why a member name is refused ("" when it is fine): absolute, drive or `..` paths. Nothing
    is ever written under these names; refusing them keeps what the CSV shows honest."""
    if not name or "\x00" in name:
        return "has an empty or invalid name"
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        return "has an absolute path"
    if ".." in normal.split("/"):
        return "has '..' in its path (path traversal)"
    if posixpath.normpath(normal).startswith("../"):
        return "points outside the archive"
    return ""


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.accepted = 0
        self.total = 0

    def refusal(self, size: int) -> tuple[str, str] | None:
        if self.accepted >= self.limits.images:
            return "job_limit", f"is past the limit of {self.limits.images} images in one job"
        if self.total + size > self.limits.total_bytes:
            return "job_limit", PAST_BUDGET
        return None


class _TooLarge(Exception):
    pass


def _read_limited(source: IO[bytes], first: bytes, limit: int, budget: _Budget) -> tuple[IO[bytes], int, str]:
    """(spooled file positioned at 0, size, sha256) of `first` + the rest of `source`, stopping with
    _TooLarge past `limit` bytes or past the job's remaining budget."""
    room = min(limit, budget.limits.total_bytes - budget.total)
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - handed to the caller
    digest = hashlib.sha256()
    size = 0
    chunk = first
    try:
        while chunk:
            size += len(chunk)
            if size > room:
                raise _TooLarge
            digest.update(chunk)
            spool.write(chunk)
            chunk = source.read(_CHUNK)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool, size, digest.hexdigest()


def _member(
    name: str, source: IO[bytes], budget: _Budget, stage: Callable[[IO[bytes]], str], declared: int | None
) -> Member:
    """Judges one member from its first bytes, then reads and stages it within the limits."""
    limits = budget.limits
    head = source.read(256)
    if not head:
        return Member(name, code="empty", reason="is empty (0 bytes)")
    if is_zip(head):
        return Member(
            name,
            code="nested_archive",
            reason="is an archive inside the submission; nested archives are not opened",
        )
    if not looks_like_image(head):
        return Member(
            name, code="not_an_image", reason="is not an image this service reads (PNG, JPEG or DICOM)"
        )
    refused = budget.refusal(declared or len(head))
    if refused:
        return Member(name, code=refused[0], reason=refused[1])
    try:
        spool, size, sha256 = _read_limited(source, head, limits.member_bytes, budget)
    except _TooLarge:
        if budget.total + limits.member_bytes > limits.total_bytes:
            return Member(
                name,
                code="job_limit",
                reason="is past the total size allowed for one job (or for your jobs still running)",
            )
        return Member(
            name,
            code="too_large",
            reason=f"is larger than the {limits.member_bytes:,} bytes allowed per image",
        )
    with spool:
        staged = stage(spool)
    budget.accepted += 1
    budget.total += size
    return Member(name, size=size, sha256=sha256, staged=staged)


def _zip_members(
    label: str, upload: IO[bytes], budget: _Budget, max_entries: int, stage: Callable[[IO[bytes]], str]
) -> Iterator[Member]:
    try:
        archive = zipfile.ZipFile(upload)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveRefused(f"{label} is not a readable ZIP archive ({exc}).") from exc
    files = [info for info in infos if not info.is_dir()]
    if len(files) > max_entries:
        raise ArchiveRefused(
            f"{label} holds {len(files):,} files; one job takes at most {budget.limits.images:,} images."
        )
    limit = budget.limits.member_bytes
    with archive:
        for info in files:
            name = info.filename
            reason = unsafe_name(name)
            if reason:
                yield Member(name, code="unsafe_name", reason=reason)
            elif info.flag_bits & 0x1:
                yield Member(name, code="encrypted", reason="is encrypted")
            elif info.file_size > limit:
                yield Member(
                    name,
                    code="too_large",
                    reason=f"declares {info.file_size:,} bytes inflated, more than the {limit:,} allowed "
                    "per image",
                )
            elif info.file_size > _RATIO_FROM and info.file_size > MAX_RATIO * max(1, info.compress_size):
                yield Member(
                    name,
                    code="zip_bomb",
                    reason=f"inflates {info.file_size / max(1, info.compress_size):,.0f} times (a ZIP "
                    "bomb?); X-rays barely compress",
                )
            else:
                yield from _zip_member(archive, info, budget, stage)


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, stage) -> Iterator[Member]:
    name = info.filename
    try:
        with archive.open(info) as handle:
            # Held to its compressed size too: a directory that lies about sizes gains nothing.
            member = _member(name, handle, budget, stage, declared=info.file_size)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
        member = Member(name, code="unreadable", reason=f"cannot be extracted ({exc})")
    except Exception as exc:  # noqa: BLE001 - zlib/bz2/lzma raise their own error types
        member = Member(name, code="unreadable", reason=f"cannot be extracted ({type(exc).__name__})")
    yield member


def submission_members(
    files: list[tuple[str, IO[bytes]]], limits: Limits, stage: Callable[[IO[bytes]], str]
) -> Iterator[Member]:
    """Every image of a submission in order, one at a time: each uploaded file (a name and a
    seekable file object), or each file inside an uploaded ZIP. Accepted members have been handed
    to `stage` (a function that keeps a readable file and returns where). Raises ArchiveRefused
    when an uploaded ZIP cannot be read at all."""
    budget = _Budget(limits)
    # Rows are written for refused members too; this bounds how many a single request can make.
    max_entries = limits.images * 4 + 100
    count = 0
    for name, upload in files:
        name = name or f"file-{count + 1}"
        reason = unsafe_name(name)
        upload.seek(0)
        head = upload.read(4)
        upload.seek(0)
        if reason:
            members: Iterator[Member] = iter([Member(name, code="unsafe_name", reason=reason)])
        elif is_zip(head):
            members = _zip_members(repr(name), upload, budget, max_entries - count, stage)
        else:
            members = iter([_member(name, upload, budget, stage, declared=getattr(upload, "size", None))])
        for member in members:
            count += 1
            if count > max_entries:
                raise ArchiveRefused(f"The submission holds more than {max_entries:,} files.")
            yield member
