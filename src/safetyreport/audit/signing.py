"""The Ed25519 key that signs audit exports and checkpoints.

The private key lives in a file, never in the database: someone who can rewrite the
database still cannot forge a signature. It is created on first start in the data
folder, or read from the file ``SAFETYREPORT_SIGNING_KEY`` names. Several service
instances must share one key file to sign with one key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from safetyreport.audit.chain import format_time
from safetyreport.audit.offline import CHECKPOINT_FORMAT, canonical_json, key_id
from safetyreport.keyfiles import create_key_file
from safetyreport.settings import Settings

DEFAULT_KEY_FILE = "audit-signing-key.pem"


class CheckpointBody(msgspec.Struct, frozen=True, kw_only=True):
    """What a checkpoint signs: a chain's head at a time, with the key that signed it."""

    format: str
    chain: str
    seq: int
    hash: str
    signed_at: str
    key_id: str


def checkpoint_body(
    chain: str, seq: int, hash_: bytes, signed_at: datetime, key_id: str
) -> CheckpointBody:
    return CheckpointBody(
        format=CHECKPOINT_FORMAT,
        chain=chain,
        seq=seq,
        hash=hash_.hex(),
        signed_at=format_time(signed_at),
        key_id=key_id,
    )


class SigningKeyError(RuntimeError):
    """The signing key file is missing, unreadable or not an Ed25519 key."""


@dataclass(frozen=True, slots=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, document: dict[str, Any]) -> str:
        """The base64 Ed25519 signature over ``canonical_json(document)``."""
        return base64.b64encode(self.private_key.sign(canonical_json(document))).decode()

    def sign_checkpoint(self, body: CheckpointBody) -> bytes:
        """The raw signature of a checkpoint, as ``audit_checkpoints`` stores it."""
        return self.private_key.sign(canonical_json(msgspec.to_builtins(body)))


def key_file(settings: Settings) -> Path:
    return settings.audit.signing_key_file or settings.data_dir / DEFAULT_KEY_FILE


def load_signer(settings: Settings) -> Signer:
    """The service's signer: the configured key file, or the data folder's (made if new)."""
    path = key_file(settings)
    if settings.audit.signing_key_file is None and not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        create_key_file(path, pem)
    return signer_from_file(path)


def signer_from_file(path: Path) -> Signer:
    """The signer of the PEM key file at ``path``, which must exist."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise SigningKeyError(
            f"SAFETYREPORT_SIGNING_KEY names {path}, which does not exist"
        ) from None
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"cannot read the audit signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the audit signing key {path} is not an Ed25519 key")
    return Signer(key)


def existing_public_key(settings: Settings) -> Ed25519PublicKey | None:
    """The service's public key, from its key file if there is one (none is made)."""
    path = key_file(settings)
    if settings.audit.signing_key_file is None and not path.exists():
        return None
    return load_signer(settings).private_key.public_key()
