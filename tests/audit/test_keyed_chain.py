"""The keyed chain (version 3): rows and checkpoints that only the holder of the audit key can make,
key rotation, and the scheduled checkpoint (audit.keys, audit.integrity, audit.checkpoints)."""

from __future__ import annotations

import hmac
import json
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit import integrity
from audit.checkpoints import CHECKPOINT_DIR, checkpoint_latest, checkpoint_scheduled
from audit.integrity import chain_body, compute_chain_hash, prediction_create_chained
from audit.keys import Keyring, key_id, keyring
from audit.models import ChainGenesis, Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from tests.conftest import ROOT, tamper_sql

KEY_A = "a-first-audit-key-of-at-least-32-characters"
KEY_B = "b-second-audit-key-of-at-least-32-characters"


@pytest.fixture
def key_a(settings):
    settings.LUNGSITE_AUDIT_KEY = KEY_A
    return settings


@pytest.fixture
def version(db):
    return ModelVersion.objects.create(
        version_name="keyed", storage_path="weights/k.pt", sha256="c" * 64, class_names=DEFAULT_CLASS_NAMES
    )


def _row(version, user=None, n: int = 0) -> Prediction:
    data = f"keyed image {n}".encode()
    name = storages["xray_images"].save(f"images/keyed/{n}.png", ContentFile(data))
    return prediction_create_chained(
        stored_data=data,
        model=version,
        image_url=name,
        results_json={"findings": [{"name": "Mass", "probability": n / 10, "positive": False}]},
        image_sha256=f"{n:064x}",
        user=user,
        source=Prediction.SOURCE_API,
        latency_ms=10.0 + n,
        heatmap_data=bytes([n]) * 8,
    )


def _head() -> str:
    return Prediction.objects.order_by("-id").values_list("chain_hash", flat=True).first() or ""


def _insert_as_a_writer(
    version, user, *, chain_version: int, hash_with, key_id_claimed: str = ""
) -> Prediction:
    """A row appended as a role that may INSERT would append it: linked to the head, hashed by
    `hash_with(prev_hash, body)` (not the audit key, which this role does not hold)."""
    row = Prediction(
        chain_version=chain_version,
        chain_key_id=key_id_claimed,
        created_at=timezone.now(),
        model=version,
        image_url="images/keyed/forged.png",
        results_json={"findings": [{"name": "Mass", "probability": 0.99, "positive": True}]},
        image_sha256="f" * 64,
        stored_sha256="",
        user=user,
        source=Prediction.SOURCE_API,
        heatmap_data=b"",
        prev_hash=_head(),
    )
    row.chain_hash = hash_with(row.prev_hash, chain_body(row))
    row.save(force_insert=True)
    return row


def _verify(*args) -> tuple[dict, CommandError | None]:
    out = StringIO()
    try:
        call_command("verify_audit", "--no-progress", "--skip-images", *args, stdout=out)
        return json.loads(out.getvalue()), None
    except CommandError as exc:
        return json.loads(out.getvalue()), exc


def test_it_keys_new_rows_with_the_configured_key(key_a, version):
    row = _row(version)
    assert row.chain_version == 3 and row.chain_key_id == key_id(KEY_A.encode())
    stored = Prediction.objects.get(pk=row.pk)
    assert compute_chain_hash(stored.prev_hash, stored) == row.chain_hash
    # Without the key the hash cannot be recomputed: the public sha256 of the same text differs.
    assert integrity._public_hash(stored.prev_hash, chain_body(stored)) != row.chain_hash
    report, error = _verify()
    assert error is None and report["ok"], report


@pytest.mark.parametrize("claimed_version", [2, 3])
def test_it_finds_a_row_inserted_with_the_public_algorithm(key_a, version, clinician, claimed_version):
    rows = [_row(version, clinician, n) for n in range(3)]
    forged = _insert_as_a_writer(
        version,
        clinician,
        chain_version=claimed_version,
        hash_with=integrity._public_hash,
        key_id_claimed=rows[0].chain_key_id if claimed_version == 3 else "",
    )
    after = _row(version, clinician, 9)  # the app goes on appending after it
    assert after.prev_hash == forged.chain_hash
    report, error = _verify()
    assert error is not None and error.returncode == 1
    assert report["breaks"] == 1
    assert report["first_break"]["id"] == forged.pk and report["first_break"]["kind"] == "unkeyed"


def test_it_finds_a_row_attributed_to_another_user(key_a, version, clinician, other_clinician):
    rows = [_row(version, clinician, n) for n in range(3)]
    # A row in another user's name, signed with a key that is not the audit key.
    guess = Keyring({rows[0].chain_key_id: hmac.new(b"x" * 40, digestmod="sha256")})
    forged = _insert_as_a_writer(
        version,
        other_clinician,
        chain_version=3,
        hash_with=lambda prev, body: guess.mac(rows[0].chain_key_id, prev + body),
        key_id_claimed=rows[0].chain_key_id,
    )
    report, _ = _verify()
    assert report["first_break"]["id"] == forged.pk and report["first_break"]["kind"] == "altered"

    # An existing row moved to another user by someone who may UPDATE (the owner, past the trigger).
    tamper_sql("DELETE FROM predictions WHERE id = %s", [forged.pk])
    tamper_sql("UPDATE predictions SET user_id = %s WHERE id = %s", [other_clinician.pk, rows[1].pk])
    report, _ = _verify("--no-checkpoint")
    assert report["first_break"]["id"] == rows[1].pk and report["first_break"]["kind"] == "altered"


def test_old_unkeyed_rows_verify_and_new_rows_continue_them(key_a, version):
    """Rows written as chain version 2 (sha256, no key) before the keyed chain was installed keep
    verifying; a version 2 row written after that is a break."""
    old = []
    for _ in range(3):
        old.append(_insert_as_a_writer(version, None, chain_version=2, hash_with=integrity._public_hash))
        assert compute_chain_hash(old[-1].prev_hash, old[-1]) == old[-1].chain_hash
    ChainGenesis.objects.all().update(keyed_from_id=old[-1].pk + 1)  # as migration 0013 records it
    new = _row(version, None, 5)
    assert new.chain_version == 3 and new.prev_hash == old[-1].chain_hash
    report, error = _verify()
    assert error is None and report["rows"] == 4, report

    late = _insert_as_a_writer(version, None, chain_version=2, hash_with=integrity._public_hash)
    report, error = _verify()
    assert error is not None and report["first_break"] == {
        "id": late.pk,
        "kind": "unkeyed",
        "message": report["first_break"]["message"],
    }


def test_keys_rotate_and_a_removed_key_leaves_its_rows_unverifiable(settings, version):
    settings.LUNGSITE_AUDIT_KEY = KEY_A
    first = [_row(version, None, n) for n in range(2)]
    settings.LUNGSITE_AUDIT_KEY = f"{KEY_B},{KEY_A}"  # the new key first; the old one still verifies
    second = [_row(version, None, n) for n in range(2, 4)]
    assert {row.chain_key_id for row in first} == {key_id(KEY_A.encode())}
    assert {row.chain_key_id for row in second} == {key_id(KEY_B.encode())}
    report, error = _verify()
    assert error is None and report["rows"] == 4, report

    settings.LUNGSITE_AUDIT_KEY = KEY_B  # the old key dropped: its rows cannot be checked any more
    report, error = _verify("--no-checkpoint")
    assert error is not None and report["first_break"]["kind"] == "unknown_key"
    assert report["first_break"]["id"] == first[0].pk and report["breaks"] == 2


def test_the_key_file_is_made_once_and_read_as_a_keyring(settings, tmp_path, version):
    settings.LUNGSITE_AUDIT_KEY = ""
    settings.LUNGSITE_AUDIT_KEY_FILE = str(tmp_path / "keys" / "audit_keys")
    made = keyring()
    path = tmp_path / "keys" / "audit_keys"
    assert path.stat().st_mode & 0o777 == 0o600
    assert keyring().signing_id == made.signing_id  # created once, then read
    row = _row(version)
    assert row.chain_key_id == made.signing_id

    path.write_text(f"# rotated\n{KEY_B}\n{path.read_text()}")
    assert keyring().signing_id == key_id(KEY_B.encode())
    assert _row(version, None, 1).chain_key_id == key_id(KEY_B.encode())
    report, error = _verify()
    assert error is None and report["rows"] == 2


def test_short_keys_are_refused(settings, version):
    from django.core.exceptions import ImproperlyConfigured

    settings.LUNGSITE_AUDIT_KEY = "short"
    with pytest.raises(ImproperlyConfigured, match="at least 32"):
        _row(version)


def _checkpoint_files() -> list[str]:
    _, names = storages["xray_images"].listdir(CHECKPOINT_DIR)
    return sorted(names)


def test_checkpoints_are_signed_and_a_forged_one_is_found(key_a, version):
    rows = [_row(version, None, n) for n in range(3)]
    report, error = _verify()
    assert error is None
    latest = checkpoint_latest()
    assert latest["key_id"] == rows[0].chain_key_id and len(latest["mac"]) == 64

    # Someone with the storage's credentials writes a newer checkpoint without the key.
    storage = storages["xray_images"]
    fake = {**latest, "last_id": rows[-1].pk + 100, "rows": 99}
    storage.save(f"{CHECKPOINT_DIR}/{fake['last_id']:019d}-fake.json", ContentFile(json.dumps(fake).encode()))
    report, error = _verify()
    assert error is not None and report["first_break"]["kind"] == "checkpoint_forged"
    unsigned = {key: value for key, value in fake.items() if key != "mac"}
    storage.save(
        f"{CHECKPOINT_DIR}/{fake['last_id'] + 1:019d}-fake.json", ContentFile(json.dumps(unsigned).encode())
    )
    report, error = _verify()
    assert error is not None and report["first_break"]["kind"] == "checkpoint_forged"


def test_the_scheduled_checkpoint_signs_a_head_that_moved_and_verified(key_a, version):
    assert checkpoint_scheduled()["reason"] == "the log is empty"
    rows = [_row(version, None, n) for n in range(3)]
    done = checkpoint_scheduled()
    assert done["written"] and done["last_id"] == rows[-1].pk and done["reason"] == "3 new rows verified"
    latest = checkpoint_latest()
    assert latest["by"] == "schedule" and latest["head"] == rows[-1].chain_hash
    assert checkpoint_scheduled() == {**done, "written": None, "reason": "no new rows"}

    more = [_row(version, None, n) for n in range(3, 5)]
    out = StringIO()
    call_command("audit_checkpoint", stdout=out)
    printed = json.loads(out.getvalue())
    assert printed["last_id"] == more[-1].pk and printed["reason"] == "2 new rows verified"

    # A row since the last checkpoint that does not verify: no checkpoint vouches for it.
    files = _checkpoint_files()
    _insert_as_a_writer(version, None, chain_version=2, hash_with=integrity._public_hash)
    with pytest.raises(CommandError, match="no checkpoint written"):
        call_command("audit_checkpoint", stdout=StringIO())
    assert _checkpoint_files() == files


def test_celery_beat_runs_the_scheduled_checkpoint():
    # A worker started from this code, in a process of its own (as `celery -A lungsite worker`
    # starts), registers the task that beat's schedule names.
    entry = django_settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert entry["schedule"] == django_settings.LUNGSITE_AUDIT_CHECKPOINT_SECONDS > 0
    registered = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lungsite.celery import app; app.loader.import_default_modules(); "
            "print('\\n'.join(sorted(app.tasks)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert entry["task"] == "audit.tasks.chain_checkpoint"
    assert entry["task"] in registered
