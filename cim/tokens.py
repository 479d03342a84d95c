"""Bearer JWTs from an identity provider, as an alternative to API keys (PyJWT; optional).

A deployment that sets ``CIM_JWT_ISSUER`` and ``CIM_JWT_JWKS_URL`` accepts ``Authorization: Bearer
<JWT>`` signed by a key of that JWKS (RS256/ES256/EdDSA, never ``none`` or a shared secret), issued by
that issuer, for ``CIM_JWT_AUDIENCE`` when set, not expired. Its claims carry the caller:

| claim | meaning |
|---|---|
| ``sub`` | who (recorded in the audit trail) |
| ``cim_role`` | a user role (:data:`cim.users.USER_ROLES`) |
| ``cim_city`` | ``true``: the whole city |
| ``cim_district``, ``cim_street``, ``cim_grids`` (list), ``cim_department`` | the jurisdiction |

Anything wrong — a bad signature, an expired token, a missing or unknown role, a code the base does not
know, no jurisdiction at all — is :class:`InvalidToken` (401): never a fall-back to a wider scope.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.jurisdiction import Scope
from cim.users import PERSONAL_DATA_ROLES, USER_ROLES

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class InvalidToken(Exception):
    """The token cannot be accepted; the message says why (it goes into the 401's detail)."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("cim_")


@dataclass(frozen=True)
class TokenCaller:
    scope: Scope
    key_role: str
    expires_at: float


class TokenVerifier:
    """Verifies tokens against one issuer's JWKS (fetched and cached by PyJWT's client)."""

    def __init__(self, issuer: str, jwks_url: str, audience: str | None = None) -> None:
        import jwt

        self.issuer, self.audience = issuer, audience
        self._file_keys: jwt.PyJWKSet | None = None
        if jwks_url.startswith("file://"):  # a JWKS kept beside the deployment (PyJWT's client fetches http(s))
            from urllib.parse import unquote, urlparse

            text = Path(unquote(urlparse(jwks_url).path)).read_text(encoding="utf-8")
            self._file_keys = jwt.PyJWKSet.from_json(text)
        else:
            self._client = jwt.PyJWKClient(jwks_url, cache_keys=True)

    def _signing_key(self, token: str) -> Any:
        import jwt

        if self._file_keys is None:
            return self._client.get_signing_key_from_jwt(token)
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._file_keys.keys:
            if kid is None or key.key_id == kid:
                return key
        raise jwt.PyJWKClientError(f"no key with kid {kid!r} in the JWKS")

    def verify(self, token: str, engine: Engine) -> TokenCaller:
        import jwt

        try:
            signing_key = self._signing_key(token)
            claims = jwt.decode(token, signing_key.key, algorithms=ALGORITHMS, issuer=self.issuer,
                                audience=self.audience, options={"require": ["exp", "iss", "sub"],
                                                                 "verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.PyJWKClientError as exc:
            raise InvalidToken(f"the token's signing key is not the issuer's: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None
        return TokenCaller(scope_from_claims(claims, engine), USER_ROLES[claims["cim_role"]], float(claims["exp"]))


def _text(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"claim {name}: expected a non-empty string")
    return value


def scope_from_claims(claims: dict[str, Any], engine: Engine) -> Scope:
    """The caller's scope from a verified token's claims; every code must exist in the base."""
    role = claims.get("cim_role")
    if role not in USER_ROLES:
        raise InvalidToken(f"claim cim_role: must be one of {', '.join(USER_ROLES)}, got {role!r}")
    district, street, department = (_text(claims, n) for n in ("cim_district", "cim_street", "cim_department"))
    grids = claims.get("cim_grids") or []
    if not isinstance(grids, list) or not all(isinstance(g, str) and g for g in grids):
        raise InvalidToken("claim cim_grids: expected a list of grid codes")
    city = claims.get("cim_city") is True
    if city and (district or street or grids):
        raise InvalidToken("claims: cim_city excludes cim_district, cim_street and cim_grids")
    if not (city or district or street or grids or department):
        raise InvalidToken("claims: the token names no jurisdiction (cim_city, cim_district, cim_street, "
                           "cim_grids or cim_department)")
    _check_codes(engine, district, street, tuple(grids), department)
    personal = role in PERSONAL_DATA_ROLES
    user = str(claims["sub"])
    if city and not department:
        return Scope("city", role=role, user=user, personal_data=personal)
    return Scope("area", role=role, user=user, district=district, street=street, grids=tuple(sorted(set(grids))),
                 department=department, personal_data=personal)


def _check_codes(engine: Engine, district: str | None, street: str | None, grids: tuple[str, ...],
                 department: str | None) -> None:
    with engine.connect() as conn:
        row = conn.execute(sa.text("""SELECT
            (:d IS NULL OR EXISTS (SELECT 1 FROM districts WHERE code = :d AND valid_to IS NULL)),
            (:s IS NULL OR EXISTS (SELECT 1 FROM streets WHERE code = :s AND valid_to IS NULL
                                   AND (:d IS NULL OR district_code = :d))),
            (SELECT count(DISTINCT grid_code) FROM grids WHERE grid_code = ANY(:g) AND valid_to IS NULL),
            (:dep IS NULL OR EXISTS (SELECT 1 FROM departments WHERE code = :dep))"""),
            {"d": district, "s": street, "g": list(grids), "dep": department}).one()
    for ok, claim, value in ((row[0], "cim_district", district), (row[1], "cim_street", street),
                             (row[2] == len(set(grids)), "cim_grids", ",".join(grids)),
                             (row[3], "cim_department", department)):
        if not ok:
            raise InvalidToken(f"claim {claim}: {value!r} is not a code of this base (or not inside the district)")
