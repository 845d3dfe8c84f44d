"""What a submission holds: uploaded files and the members of ZIP archives, each either accepted
(its bytes) or refused with a message. No Django, no storage: nothing is written here.

A ZIP is read member by member with every limit checked while inflating, whatever its directory
claims (a ZIP bomb declares small sizes and inflates to gigabytes), and a member inside a member
is never opened (nested archives)."""

from __future__ import annotations

import hashlib
import io
import posixpath
import zipfile
from dataclasses import dataclass

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_READ_CHUNK = 1 << 20


class ArchiveRefused(Exception):
    """The submission as a whole cannot be read (not a ZIP, a broken directory, too many entries)."""


@dataclass(frozen=True)
class Limits:
    member_bytes: int  # one image, inflated
    total_bytes: int  # all accepted images together, inflated
    images: int  # accepted images in one job


@dataclass
class Member:
    name: str
    data: bytes | None  # None when refused
    reason: str = ""  # why it was refused
    size: int = 0
    sha256: str = ""


def looks_like_image(data: bytes) -> bool:
    """PNG, JPEG, DICOM with its preamble, or an ACR-NEMA style DICOM (as inference decodes)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff"):
        return True
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x02\x00") and data[3:4] == b"\x00"


def is_zip(data: bytes) -> bool:
    return data[:4] in _ZIP_MAGIC


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


def _check(name: str, data: bytes, budget: _Budget) -> Member:
    if not data:
        return Member(name, None, "is empty (0 bytes)")
    if is_zip(data):
        return Member(
            name, None, "is an archive inside the submission; nested archives are not opened", len(data)
        )
    if not looks_like_image(data):
        return Member(name, None, "is not an image this service reads (PNG, JPEG or DICOM)", len(data))
    if budget.accepted >= budget.limits.images:
        return Member(name, None, f"is past the limit of {budget.limits.images} images in one job", len(data))
    if budget.total + len(data) > budget.limits.total_bytes:
        return Member(name, None, "is past the total size allowed for one job", len(data))
    budget.accepted += 1
    budget.total += len(data)
    return Member(name, data, "", len(data), hashlib.sha256(data).hexdigest())


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes | str:
    """The member's bytes, or why they were refused. Reads at most `limit` + 1 inflated bytes."""
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.file_size > limit:
        return f"declares {info.file_size:,} bytes inflated, more than the {limit:,} allowed per image"
    out = io.BytesIO()
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(_READ_CHUNK):
                out.write(chunk)
                if out.tell() > limit:
                    return f"inflates past the {limit:,} bytes allowed per image (ZIP bomb?)"
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
        return f"cannot be extracted ({exc})"
    except Exception as exc:  # noqa: BLE001 - zlib/bz2/lzma raise their own error types
        return f"cannot be extracted ({type(exc).__name__})"
    return out.getvalue()


def _zip_members(label: str, data: bytes, budget: _Budget, max_entries: int) -> list[Member]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveRefused(f"{label} is not a readable ZIP archive ({exc}).") from exc
    files = [info for info in infos if not info.is_dir()]
    if len(files) > max_entries:
        raise ArchiveRefused(
            f"{label} holds {len(files):,} files; one job takes at most {budget.limits.images:,} images."
        )
    members = []
    with archive:
        for info in files:
            name = info.filename
            reason = unsafe_name(name)
            if reason:
                members.append(Member(name, None, reason))
                continue
            if budget.accepted >= budget.limits.images:
                # Not inflated at all: past the limit the member's bytes do not matter.
                members.append(
                    Member(name, None, f"is past the limit of {budget.limits.images} images in one job")
                )
                continue
            content = _read_member(archive, info, budget.limits.member_bytes)
            if isinstance(content, str):
                members.append(Member(name, None, content))
            else:
                members.append(_check(name, content, budget))
    return members


def submission_members(files: list[tuple[str, bytes]], limits: Limits) -> list[Member]:
    """Every image of a submission in order: each uploaded file, or each file inside an uploaded
    ZIP (one level). Raises ArchiveRefused when an uploaded ZIP cannot be read at all."""
    budget = _Budget(limits)
    # Rows are written for refused members too; this bounds how many a single request can make.
    max_entries = limits.images * 4 + 100
    members: list[Member] = []
    for name, data in files:
        name = name or f"file-{len(members) + 1}"
        reason = unsafe_name(name)
        if reason:
            members.append(Member(name, None, reason))
        elif is_zip(data):
            members.extend(_zip_members(repr(name), data, budget, max_entries - len(members)))
        elif len(data) > limits.member_bytes:
            members.append(
                Member(name, None, f"is larger than the {limits.member_bytes:,} bytes allowed per image")
            )
        else:
            members.append(_check(name, data, budget))
        if len(members) > max_entries:
            raise ArchiveRefused(f"The submission holds more than {max_entries:,} files.")
    return members
