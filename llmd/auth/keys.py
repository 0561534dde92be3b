"""API keys: the keys file (TOML, written with tomli-w), secrets, hashing and verification.

A secret looks like `sk-llmd-<id>_<random>`: the 12-hex-digit id names the key's record, so
verifying a secret is one dict lookup plus one hash check, never a scan. Only a salted scrypt
hash of the secret is stored. scrypt is slow on purpose (~30-50 ms); to keep every request
under a millisecond, a secret that verified once is remembered in memory as an HMAC under a
random per-process key, so later requests cost one HMAC and a constant-time comparison.
A secret whose id names no key is checked against `dummy_hash()` (same parameters), so a
wrong id costs what a wrong secret costs and timing does not tell which ids exist.

The file is meant to be read and edited by IT: one `[keys.NAME]` table per key. A file that
does not parse or validate is refused with its line and reason, and the keys in force stay.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmd.explain import explain, read_toml

PREFIX = "sk-llmd-"
_ID_LEN = 12
_SECRET = re.compile(rf"^{PREFIX}([0-9a-f]{{{_ID_LEN}}})_([A-Za-z0-9_-]{{20,128}})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# scrypt cost: 2^14 x 8 x 128 bytes = 16 MiB and tens of milliseconds per check.
_N, _R, _P = 2**14, 8, 1


class KeyError_(Exception):
    """A key operation that cannot be done (unknown name, name taken, bad value)."""


class KeyRecord(BaseModel):
    """One `[keys.NAME]` table of the keys file."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(pattern=rf"^[0-9a-f]{{{_ID_LEN}}}$", description="Public id (in the secret).")
    hash: str = Field(description="scrypt$N$r$p$salt$hash of the secret (base64).")
    admin: bool = Field(False, description="May manage keys, models, usage and audit.")
    metrics: bool = Field(
        False, description="May read /metrics (every key's name and usage): Prometheus' key."
    )
    models: list[str] | None = Field(
        None, description="Models (names or aliases) the key may use; absent: all."
    )
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")
    concurrency: int | None = Field(None, ge=1, description="Requests at the same time.")
    monthly_tokens: int | None = Field(None, ge=1, description="Tokens per calendar month (UTC).")
    weight: int = Field(1, ge=1, le=1000, description="Share of the engine when it is busy.")
    log_content: bool = Field(False, description="Store prompt and answer text for this key.")
    expires: dt.date | dt.datetime | None = Field(None, description="Refused from then on.")
    created: dt.datetime | None = None
    revoked: dt.datetime | None = Field(None, description="Set by `llmd keys revoke`.")
    description: str = ""

    def expired(self, now: dt.datetime) -> bool:
        if self.expires is None:
            return False
        if isinstance(self.expires, dt.datetime):
            expires = self.expires
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            return now >= expires
        return now.date() >= self.expires

    def allows_model(self, names: set[str]) -> bool:
        """`names`: the requested model's real name and every alias of it."""
        return self.models is None or bool(names.intersection(self.models))


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: dict[str, KeyRecord] = Field(default_factory=dict)


@dataclass(frozen=True)
class Key:
    """A key in force, as the middleware sees it."""

    name: str
    record: KeyRecord


class KeysFileError(Exception):
    """The keys file cannot be used: the message has the file, line and reason."""


def new_secret() -> tuple[str, str]:
    """(id, secret)."""
    key_id = secrets.token_hex(_ID_LEN // 2)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 2**20)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def dummy_hash() -> str:
    """A stored hash no secret matches, with the parameters of real ones: what an unknown key
    id is checked against, at the cost of a real check."""
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(os.urandom(16)).decode()}${b64(os.urandom(64)).decode()}"


def check_hash(secret: str, stored: str) -> bool:
    """Slow: scrypt. Constant-time comparison of the digests."""
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            # Any header text encodes (lone surrogates too): a secret that could not would be
            # refused at once, faster than a real check.
            secret.encode("utf-8", "surrogatepass"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 2**20,
            dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def parse_secret(secret: str) -> str | None:
    """The key id inside a well-formed secret, else None."""
    match = _SECRET.match(secret)
    return match.group(1) if match else None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise KeyError_(f"key name {name!r}: use 1-64 letters, digits and . _ @ -")
    return name


# -- the file ------------------------------------------------------------------------------


def read_keys_file(path: Path) -> dict[str, KeyRecord]:
    """Parse and validate; a missing file is no keys. Raises KeysFileError with the line."""
    text, data = read_toml(path, KeysFileError, missing_ok=True)
    try:
        parsed = KeysFile.model_validate(data)
    except ValidationError as exc:
        raise KeysFileError(explain(path, text, exc)) from exc
    for name in parsed.keys:
        try:
            check_name(name)
        except KeyError_ as exc:
            raise KeysFileError(f"{path}: {exc}") from exc
    ids: dict[str, str] = {}
    for name, record in parsed.keys.items():
        if record.id in ids:
            raise KeysFileError(f"{path}: keys {ids[record.id]!r} and {name!r} share id")
        ids[record.id] = name
    return parsed.keys


_HEADER = """\
# llmd API keys. Written by `llmd keys` and the admin API; you may edit it by hand (the daemon
# reloads it on change and on SIGHUP; an invalid edit is refused and the old keys stay).
# Only salted scrypt hashes of the secrets are stored here. One [keys.NAME] table per key:
# admin, metrics, models, rpm, tpm, concurrency, monthly_tokens, weight, log_content, expires,
# revoked.

"""


def write_keys_file(path: Path, keys: dict[str, KeyRecord]) -> None:
    """Atomically replace the file (write a temporary file, then rename), mode 0600."""
    data = {
        "keys": {
            name: {
                k: v
                for k, v in rec.model_dump().items()
                # `metrics` only when set: without it the file stays readable by the llmd
                # versions from before that right (a downgrade keeps its keys).
                if v is not None and v != "" and not (k == "metrics" and v is False)
            }
            for name, rec in keys.items()
        }
    }
    text = _HEADER + tomli_w.dumps(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of the keys file between the CLI and the daemon."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# -- operations (the CLI and the admin API share them) -------------------------------------


def add_key(path: Path, name: str, **fields: Any) -> tuple[KeyRecord, str]:
    """Create a key; returns its record and the secret (shown once, never stored)."""
    check_name(name)
    with locked(path):
        keys = read_keys_file(path)
        if name in keys:
            raise KeyError_(f"a key named {name!r} exists already")
        key_id, secret = new_secret()
        try:
            record = KeyRecord(
                id=key_id,
                hash=hash_secret(secret),
                created=utcnow(),
                **{k: v for k, v in fields.items() if v is not None},
            )
        except ValidationError as exc:
            raise KeyError_(explain(None, "", exc).replace("settings: ", "")) from None
        keys[name] = record
        write_keys_file(path, keys)
    return record, secret


def update_key(path: Path, name: str, **fields: Any) -> KeyRecord:
    with locked(path):
        keys = read_keys_file(path)
        if name not in keys:
            raise KeyError_(f"no key named {name!r}")
        try:
            record = keys[name].model_copy(update={})
            for field, value in fields.items():
                setattr(record, field, value)
        except ValidationError as exc:
            raise KeyError_(explain(None, "", exc).replace("settings: ", "")) from None
        keys[name] = record
        write_keys_file(path, keys)
    return record


def revoke_key(path: Path, name: str) -> KeyRecord:
    return update_key(path, name, revoked=utcnow())


def rotate_key(path: Path, name: str) -> tuple[KeyRecord, str]:
    """A new secret (and id) for the same name, rights and limits; the old secret stops."""
    with locked(path):
        keys = read_keys_file(path)
        if name not in keys:
            raise KeyError_(f"no key named {name!r}")
        key_id, secret = new_secret()
        record = keys[name].model_copy(
            update={"id": key_id, "hash": hash_secret(secret), "revoked": None}
        )
        keys[name] = record
        write_keys_file(path, keys)
    return record, secret


def describe(name: str, record: KeyRecord, now: dt.datetime | None = None) -> dict[str, Any]:
    """A key for listings: everything but the hash."""
    now = now or utcnow()
    status = "active"
    if record.revoked is not None:
        status = "revoked"
    elif record.expired(now):
        status = "expired"
    out = {"name": name, "status": status, "prefix": f"{PREFIX}{record.id}"}
    for field, value in record.model_dump(mode="json").items():
        if field not in ("hash", "id"):
            out[field] = value
    return out
