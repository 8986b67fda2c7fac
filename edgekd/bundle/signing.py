"""Ed25519 signatures over a bundle's manifest: who made the archive, not only whether it is intact.

The manifest lists the sha256 and size of every other file, so one signature over the manifest's bytes covers the
whole archive. Without a signature the checksums only catch accidental damage: anyone who edits a model can
recompute its sha256 in the manifest. With one, `edgekd bundle verify ARCHIVE --key PUBLIC.pem` proves the archive
was produced by the holder of the matching private key and not changed since.

Keys are standard PEM files (PKCS#8 private, SubjectPublicKeyInfo public), as `openssl genpkey -algorithm ed25519`
writes them; `generate_keypair` writes such a pair. An encrypted private key is opened with the passphrase in
$EDGEKD_SIGNING_PASSPHRASE.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from edgekd.errors import EdgeKDError

SIGNATURE = "manifest.sig"
SIGNATURE_FORMAT = "edgekd-signature/1"


def _serialization():
    from cryptography.hazmat.primitives import serialization

    return serialization


def _read_key_file(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"{what} not found: {path}")
    data = path.read_bytes()
    if not data.strip():
        raise EdgeKDError(f"{what} {path} is empty")
    return data


def load_private_key(path: str | Path):
    """An Ed25519 private key from a PEM file (passphrase from $EDGEKD_SIGNING_PASSPHRASE when encrypted)."""
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path, "signing key")
    passphrase = os.environ.get("EDGEKD_SIGNING_PASSPHRASE")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError as e:  # encrypted key without passphrase, or a passphrase for a plain key
        raise EdgeKDError(f"signing key {path}: {e}; set EDGEKD_SIGNING_PASSPHRASE for an encrypted key") from e
    except ValueError as e:
        raise EdgeKDError(f"signing key {path} is not a PEM private key ({str(e).splitlines()[0]})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgeKDError(f"signing key {path} is a {type(key).__name__}; edgekd signs with Ed25519 keys "
                          "(edgekd bundle keygen, or openssl genpkey -algorithm ed25519)")
    return key


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM file (a private key file is accepted too: its public half is used)."""
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise EdgeKDError(f"public key {path} is not a PEM public key ({str(e).splitlines()[0]})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise EdgeKDError(f"public key {path} is a {type(key).__name__}; expected an Ed25519 key")
    return key


def key_id(public_key) -> str:
    """First 16 hex digits of the sha256 of the raw public key: names the key in the signature file."""
    serialization = _serialization()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest: bytes, private_key_path: str | Path) -> bytes:
    """The bytes of manifest.sig: a JSON record with the Ed25519 signature of `manifest` and the key's id."""
    key = load_private_key(private_key_path)
    record = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key_id": key_id(key.public_key()),
              "signed": "manifest.json", "signature": base64.b64encode(key.sign(manifest)).decode()}
    return (json.dumps(record, indent=2) + "\n").encode()


def check_signature(manifest: bytes, signature: bytes, public_key_path: str | Path) -> str | None:
    """None when `signature` (manifest.sig bytes) is a valid signature of `manifest` by the key, else the problem."""
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key_path)
    try:
        record = json.loads(signature)
        sig = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as e:
        return f"{SIGNATURE} is not a readable signature record ({e})"
    if record.get("format") != SIGNATURE_FORMAT or record.get("algorithm") != "ed25519":
        return f"{SIGNATURE} has format {record.get('format')!r} / algorithm {record.get('algorithm')!r}; " \
               f"expected {SIGNATURE_FORMAT!r} / 'ed25519'"
    if record.get("key_id") != key_id(key):
        return (f"{SIGNATURE} was made with key {record.get('key_id')!r}, not with the given key {key_id(key)!r}: "
                "signed by someone else")
    try:
        key.verify(sig, manifest)
    except InvalidSignature:
        return f"{SIGNATURE} does not match manifest.json: the manifest was changed after signing"
    return None


def generate_keypair(private_path: str | Path, public_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair (private key mode 0600); refuses to overwrite an existing file."""
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_name(private_path.stem + ".pub.pem")
    for p in (private_path, public_path):
        if p.exists():
            raise EdgeKDError(f"{p} exists; refusing to overwrite a key (choose another path)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path
