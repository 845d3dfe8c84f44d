"""The audit log's secret keys: HMAC-SHA256 keys that the database never holds.

A keyed chain (chain version 3, audit.integrity) and signed checkpoints (audit.checkpoints) mean
that a row or a checkpoint can only be made by someone who holds a key, not by anyone who may
INSERT into the table. The keys come from, in this order:

- `LUNGSITE_AUDIT_KEY`: one key, or several separated by commas;
- the file `LUNGSITE_AUDIT_KEY_FILE` (default `<data folder>/audit_keys`): one key per line, `#`
  comments allowed. When neither is set the file is created with one random key on first use.

The first key signs new rows and checkpoints; every key listed verifies. A key's id (16 hex
digits of a hash of the key, which does not reveal the key) is recorded on each row and checkpoint,
so rotating is: put a new key first and keep the old ones after it (docs/audit.md, "Keys").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

MIN_KEY_CHARS = 32


class UnknownKey(KeyError):
    """No key with this id is in the keyring (a row signed with a key that was removed, or never ours)."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"lungsite audit key id\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """Key id -> HMAC-SHA256 state keyed with that key; the signing key comes first."""

    macs: dict[str, hmac.HMAC]

    @property
    def signing_id(self) -> str:
        return next(iter(self.macs))

    def mac(self, key_id: str, text: str) -> str:
        """HMAC-SHA256 of `text` (UTF-8) under the key `key_id`, as hex. Raises UnknownKey."""
        try:
            state = self.macs[key_id].copy()  # copying the keyed state skips the key schedule per row
        except KeyError:
            raise UnknownKey(key_id) from None
        state.update(text.encode())
        return state.hexdigest()


def _parsed(text: str, separator: str | None, source: str) -> list[bytes]:
    lines = text.split(separator) if separator else text.splitlines()
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    for key in keys:
        if len(key) < MIN_KEY_CHARS:
            raise ImproperlyConfigured(
                f"An audit key in {source} has {len(key)} characters; use at least {MIN_KEY_CHARS} "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')."
            )
    if not keys:
        raise ImproperlyConfigured(f"{source} holds no audit key.")
    return [key.encode() for key in keys]


def _file_created(path: Path) -> None:
    """Writes a new key file atomically (several workers may start at once: one wins, all read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    temp.write_text(f"{secrets.token_urlsafe(48)}\n")
    temp.chmod(0o600)
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()


_cache: dict[tuple, Keyring] = {}
_cache_lock = threading.Lock()


def keyring() -> Keyring:
    """The keys as configured now (the file is read again when it changes)."""
    from_env = getattr(settings, "LUNGSITE_AUDIT_KEY", "") or ""
    path = Path(getattr(settings, "LUNGSITE_AUDIT_KEY_FILE", "") or Path(settings.DATA_DIR) / "audit_keys")
    if from_env:
        cache_key = ("env", from_env)
    else:
        if not path.exists():
            _file_created(path)
        stat = path.stat()
        cache_key = ("file", str(path), stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        found = _cache.get(cache_key)
        if found is None:
            if from_env:
                keys = _parsed(from_env, ",", "LUNGSITE_AUDIT_KEY")
            else:
                keys = _parsed(path.read_text(), None, str(path))
            found = Keyring({key_id(key): hmac.new(key, digestmod=hashlib.sha256) for key in keys})
            _cache.clear()
            _cache[cache_key] = found
        return found
