"""The edge's signing keys and tokens for local accounts.

A local platform signs its own tokens: on first run an ES256 key pair is generated under
``<data dir>/edge/`` (the private key readable by its owner only); Envoy's ``jwt_authn`` reads the
public half as a local JWKS file. ``python -m mesh token --account A [--role admin]`` issues a
token; in a cluster an identity provider issues them and the JWKS is a mounted secret.

Claims: ``iss`` and ``aud`` (both checked by Envoy), ``sub`` (the account), ``roles``
(space-separated, as OAuth's ``scope``: Envoy copies only scalar claims into headers), ``iat``
and ``exp`` (Envoy requires an expiry).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER = "livebet-local"
AUDIENCE = "livebet"
ALGORITHM = "ES256"
DEFAULT_TTL = 12 * 3600


@dataclass(frozen=True)
class Keys:
    folder: Path

    @property
    def private_path(self) -> Path:
        return self.folder / "jwt-signing-key.pem"

    @property
    def jwks_path(self) -> Path:
        return self.folder / "jwks.json"

    @property
    def kid(self) -> str:
        return str(json.loads(self.jwks_path.read_text())["keys"][0]["kid"])

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.private_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def ensure_keys(folder: Path) -> Keys:
    """The key pair under ``folder``, generated on first use."""
    keys = Keys(folder)
    if keys.private_path.exists() and keys.jwks_path.exists():
        return keys
    folder.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = keys.private_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": uuid.uuid4().hex[:16], "alg": ALGORITHM, "use": "sig"})
    keys.jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    tmp.rename(keys.private_path)  # last: a half-made pair is made again next time
    return keys


def issue(
    keys: Keys,
    account: str,
    roles: Iterable[str] = (),
    ttl: float = DEFAULT_TTL,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    now: float | None = None,
) -> str:
    """A signed token for ``account`` with ``roles``, valid for ``ttl`` seconds from ``now``."""
    if not account or len(account) > 128:
        raise ValueError("account must be 1 to 128 characters")
    t = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": account,
        # a space-separated string like OAuth's "scope": Envoy copies only scalar claims to headers
        "roles": " ".join(sorted(set(roles))),
        "iat": t,
        "exp": t + int(ttl),
    }
    return jwt.encode(claims, keys.private_key(), algorithm=ALGORITHM, headers={"kid": keys.kid})
