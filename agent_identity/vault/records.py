"""What the token vault stores: grant keys, grant records and their serialisation.

A grant is what one user consented to at one authorization server (RFC 6749 §1.3): the
refresh token (RFC 6749 §1.5, §6), the scopes (§3.3) and resources (RFC 8707 §2) it covers,
the access tokens cached from it (§1.4, one per resource and scope set) and the claims of
the last ID token (OpenID Connect Core §2).

Partitioning (security item 26): every record lives under a :class:`GrantKey` (tenant, user,
connection, client id). Its :attr:`GrantKey.storage_key` is a JSON array, so no tenant,
user, connection or client name, whatever characters it holds, can produce another key's
text or fall under another user's listing prefix (:func:`grant_prefix`). The storage key is
also the AES-GCM associated data of the row (see :mod:`agent_identity.vault.crypto`), so a
row copied under another key does not decrypt. The client id is part of a grant's identity:
two agents (client ids) sharing one vault never see each other's grants. Keys without a
client id (three members) are those written before it was; the identity layer moves such a
row under its full key on first use.

Serialisation (:meth:`GrantRecord.to_bytes` / :meth:`GrantRecord.from_bytes`) is a
versioned JSON object (``{"v": 2, ...}``) that round-trips exactly. Any content that is not
exactly that format raises :class:`~agent_identity.errors.VaultCorrupted`: nothing is
guessed. A change of format bumps ``v``; readers keep reading older versions (``v`` 1 rows
have no ``client_id`` and no reported token scopes). Format 3 adds the grant's DPoP key
(RFC 9449: the exported key, sealed with the refresh token it is bound to, so that losing
one loses both), the grant's RFC 9396 ``authorization_details``, and per cached token the
thumbprint of the key it is bound to and the details it carries. A record that uses none
of these is still written as format 2, so an older reader can read it.

Nothing here puts a token in a ``repr``: tokens are :class:`pydantic.SecretStr` and the
records' ``repr`` names only non-secret fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from pydantic import SecretStr

from agent_identity.errors import ConfigurationError, VaultCorrupted

__all__ = [
    "CachedToken",
    "GrantKey",
    "GrantRecord",
    "TokenKey",
    "VersionedGrant",
    "grant_prefix",
]

GRANT_KIND: Final = "grant"
_FORMAT_VERSION: Final = 3

#: How a cached access token is found in a :class:`GrantRecord`: (resource, scopes).
TokenKey = tuple[str | None, frozenset[str]]


def _json_key(parts: list[str]) -> str:
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class GrantKey:
    """Where a grant lives: ``tenant``, ``user``, ``connection`` and ``client_id``.

    ``connection`` names the authorization server account the grant was obtained from (by
    default the issuer URL; for MCP servers the server URL); ``client_id`` is the client
    (agent) the grant was issued to. All are opaque, non-empty strings compared exactly.
    ``client_id=None`` names a row written before client ids were part of the key.
    """

    tenant: str
    user: str
    connection: str
    client_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("tenant", "user", "connection"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"GrantKey.{name} must be a non-empty string")
        if self.client_id is not None and (
            not isinstance(self.client_id, str) or not self.client_id
        ):
            raise ConfigurationError("GrantKey.client_id must be a non-empty string or None")

    @property
    def storage_key(self) -> str:
        """``grant:["tenant","user","connection","client_id"]`` (three members for a
        legacy key): deterministic, unambiguous, ASCII."""
        parts = [self.tenant, self.user, self.connection]
        if self.client_id is not None:
            parts.append(self.client_id)
        return f"{GRANT_KIND}:{_json_key(parts)}"

    def legacy(self) -> GrantKey:
        """The same key without the client id (rows written before it was part of it)."""
        return GrantKey(self.tenant, self.user, self.connection)

    @classmethod
    def from_storage_key(cls, storage_key: str) -> GrantKey:
        """Parse :attr:`storage_key` back; anything else raises :class:`VaultCorrupted`."""
        head = f"{GRANT_KIND}:"
        if not storage_key.startswith(head):
            raise VaultCorrupted("not a grant storage key")
        try:
            parts = json.loads(storage_key[len(head) :])
        except ValueError:
            raise VaultCorrupted("grant storage key is not valid JSON") from None
        if (
            not isinstance(parts, list)
            or len(parts) not in (3, 4)
            or not all(isinstance(p, str) and p for p in parts)
        ):
            raise VaultCorrupted("grant storage key is not three or four non-empty strings")
        key = cls(*parts)
        if key.storage_key != storage_key:  # not in canonical form: not written by us
            raise VaultCorrupted("grant storage key is not canonical")
        return key


def grant_prefix(tenant: str, user: str) -> str:
    """The storage-key prefix of every grant of ``user`` in ``tenant`` and of nobody else.

    It is the JSON of ``[tenant, user`` followed by the comma that separates the
    connection: a JSON string ends at its first unescaped quote, so a user id that is a
    prefix of another (``u`` and ``u2``) or holds ``,``, ``"`` or ``]`` cannot match.
    """
    GrantKey(tenant, user, "-")  # same validation as a full key
    return f"{GRANT_KIND}:{_json_key([tenant, user])[:-1]},"


def _finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{what} must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise ConfigurationError(f"{what} must be finite")
    return result


def _str_tuple(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ConfigurationError(f"{what} must be a collection of strings, not a string")
    result = tuple(values)
    if not all(isinstance(v, str) for v in result):
        raise ConfigurationError(f"{what} must hold strings only")
    return result


@dataclass(frozen=True, slots=True, repr=False)
class CachedToken:
    """An access token cached for one ``resource`` (RFC 8707) and one set of ``scopes``.

    ``expires_at`` and ``issued_at`` are Unix epoch seconds so that a persisted expiry
    survives a restart; the client converts them to its monotonic clock when it loads them.
    ``expires_at`` is ``None`` when the server sent no ``expires_in`` (RFC 6749 §5.1).

    ``scopes`` is what the token was asked for (its cache key); ``granted`` the scopes the
    server reported it carries when they differ (``None``: the same), ``verified`` whether
    the server reported them at all, and ``audience`` the ``aud`` of a readable JWT.
    ``dpop_jkt`` is the thumbprint of the DPoP key a ``DPoP`` token is bound to, and
    ``authorization_details`` the RFC 9396 details it carries (format 3).
    """

    resource: str | None
    scopes: frozenset[str]
    value: SecretStr
    token_type: str
    expires_at: float | None
    issued_at: float
    granted: tuple[str, ...] | None = None
    verified: bool = True
    audience: tuple[str, ...] | None = None
    dpop_jkt: str | None = None
    authorization_details: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if self.resource is not None and not isinstance(self.resource, str):
            raise ConfigurationError("CachedToken.resource must be a string or None")
        if not isinstance(self.scopes, frozenset) or not all(
            isinstance(s, str) for s in self.scopes
        ):
            raise ConfigurationError("CachedToken.scopes must be a frozenset of strings")
        if not isinstance(self.value, SecretStr):
            raise ConfigurationError("CachedToken.value must be a SecretStr")
        if not isinstance(self.token_type, str) or not self.token_type:
            raise ConfigurationError("CachedToken.token_type must be a non-empty string")
        if self.expires_at is not None:
            object.__setattr__(
                self, "expires_at", _finite(self.expires_at, "CachedToken.expires_at")
            )
        object.__setattr__(self, "issued_at", _finite(self.issued_at, "CachedToken.issued_at"))
        if self.granted is not None:
            object.__setattr__(self, "granted", _str_tuple(self.granted, "CachedToken.granted"))
        if self.audience is not None:
            object.__setattr__(
                self, "audience", _str_tuple(self.audience, "CachedToken.audience")
            )
        if not isinstance(self.verified, bool):
            raise ConfigurationError("CachedToken.verified must be a bool")
        if self.dpop_jkt is not None and (not isinstance(self.dpop_jkt, str) or not self.dpop_jkt):
            raise ConfigurationError("CachedToken.dpop_jkt must be a non-empty string or None")
        if self.authorization_details is not None:
            object.__setattr__(
                self,
                "authorization_details",
                _details(self.authorization_details, "CachedToken.authorization_details"),
            )

    @property
    def uses_v3(self) -> bool:
        return self.dpop_jkt is not None or self.authorization_details is not None

    @property
    def carried_scopes(self) -> tuple[str, ...]:
        """The scopes the token carries (as reported), else those it was asked for."""
        return self.granted if self.granted is not None else tuple(sorted(self.scopes))

    @property
    def key(self) -> TokenKey:
        """``(resource, scopes)``: the key of this token in :attr:`GrantRecord.tokens`."""
        return (self.resource, self.scopes)

    def __repr__(self) -> str:
        return (
            f"CachedToken(resource={self.resource!r}, scopes={sorted(self.scopes)!r}, "
            f"token_type={self.token_type!r}, expires_at={self.expires_at!r}, "
            f"value='**********')"
        )


def _frozen_mapping(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(value))


def _details(values: Iterable[Any], what: str) -> tuple[dict[str, Any], ...]:
    if isinstance(values, str | Mapping):
        raise ConfigurationError(f"{what} must be a sequence of objects")
    result = tuple(values)
    if not all(isinstance(v, Mapping) for v in result):
        raise ConfigurationError(f"{what} must hold JSON objects only")
    return tuple(dict(v) for v in result)


@dataclass(frozen=True, repr=False, eq=True)
class GrantRecord:
    """One grant: copy-on-write (use :meth:`replace` or :meth:`with_token`).

    ``tokens`` maps ``(resource, scopes)`` to the :class:`CachedToken` with exactly that
    resource and those scopes. ``created_at``/``updated_at`` are epoch seconds.
    """

    issuer: str
    subject: str | None
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    refresh_token: SecretStr | None
    tokens: Mapping[TokenKey, CachedToken] = field(default_factory=dict)
    id_token_claims: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    #: The client the grant was issued to (``None`` in rows of format 1).
    client_id: str | None = None
    #: The DPoP key the grant is bound to, as its key provider exported it (a private JWK
    #: for software keys, a reference for KMS keys); ``None``: a bearer grant.
    dpop_key: Mapping[str, Any] | None = None
    #: The RFC 9396 details the user consented to with this grant.
    authorization_details: tuple[dict[str, Any], ...] = ()

    __hash__ = None  # type: ignore[assignment]  # holds mappings

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ConfigurationError("GrantRecord.issuer must be a non-empty string")
        if self.client_id is not None and (
            not isinstance(self.client_id, str) or not self.client_id
        ):
            raise ConfigurationError("GrantRecord.client_id must be a non-empty string or None")
        if self.subject is not None and not isinstance(self.subject, str):
            raise ConfigurationError("GrantRecord.subject must be a string or None")
        object.__setattr__(self, "scopes", _str_tuple(self.scopes, "GrantRecord.scopes"))
        object.__setattr__(self, "resources", _str_tuple(self.resources, "GrantRecord.resources"))
        if self.refresh_token is not None and not isinstance(self.refresh_token, SecretStr):
            raise ConfigurationError("GrantRecord.refresh_token must be a SecretStr or None")
        for token_key, token in self.tokens.items():
            if not isinstance(token, CachedToken) or token.key != token_key:
                raise ConfigurationError(
                    "GrantRecord.tokens must map (resource, scopes) to the CachedToken "
                    "with that resource and those scopes"
                )
        object.__setattr__(self, "tokens", _frozen_mapping(self.tokens))
        if not all(isinstance(k, str) for k in self.id_token_claims):
            raise ConfigurationError("GrantRecord.id_token_claims keys must be strings")
        object.__setattr__(self, "id_token_claims", _frozen_mapping(self.id_token_claims))
        object.__setattr__(self, "created_at", _finite(self.created_at, "created_at"))
        object.__setattr__(self, "updated_at", _finite(self.updated_at, "updated_at"))
        if self.dpop_key is not None:
            if not isinstance(self.dpop_key, Mapping) or not all(
                isinstance(k, str) for k in self.dpop_key
            ):
                raise ConfigurationError("GrantRecord.dpop_key must be a JSON object or None")
            object.__setattr__(self, "dpop_key", _frozen_mapping(self.dpop_key))
        object.__setattr__(
            self,
            "authorization_details",
            _details(self.authorization_details, "GrantRecord.authorization_details"),
        )

    def replace(self, **changes: Any) -> GrantRecord:
        """A copy with ``changes`` applied (validated like a new record)."""
        return dataclasses.replace(self, **changes)

    def with_token(self, token: CachedToken) -> GrantRecord:
        """A copy whose token cache holds ``token`` (replacing one with the same key)."""
        return self.replace(tokens={**self.tokens, token.key: token})

    def __repr__(self) -> str:
        return (
            f"GrantRecord(issuer={self.issuer!r}, client_id={self.client_id!r}, "
            f"subject={self.subject!r}, "
            f"scopes={list(self.scopes)!r}, resources={list(self.resources)!r}, "
            f"refresh_token={'present' if self.refresh_token is not None else None}, "
            f"tokens={len(self.tokens)}, id_token_claims={sorted(self.id_token_claims)!r}, "
            f"dpop_key={'present' if self.dpop_key is not None else None}, "
            f"authorization_details={[d.get('type') for d in self.authorization_details]!r}, "
            f"updated_at={self.updated_at!r})"
        )

    # -- serialisation ---------------------------------------------------------------------

    def _uses_v3(self) -> bool:
        return (
            self.dpop_key is not None
            or bool(self.authorization_details)
            or any(t.uses_v3 for t in self.tokens.values())
        )

    def to_bytes(self) -> bytes:
        """The record as UTF-8 JSON (see :meth:`from_bytes`): format ``v`` 3 when it holds
        a DPoP key or authorization details, else format 2 (readable by older readers)."""
        version = _FORMAT_VERSION if self._uses_v3() else 2
        document: dict[str, Any] = {
            "v": version,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "subject": self.subject,
            "scopes": list(self.scopes),
            "resources": list(self.resources),
            "refresh_token": (
                None if self.refresh_token is None else self.refresh_token.get_secret_value()
            ),
            "tokens": [
                {
                    "resource": t.resource,
                    "scopes": sorted(t.scopes),
                    "value": t.value.get_secret_value(),
                    "token_type": t.token_type,
                    "expires_at": t.expires_at,
                    "issued_at": t.issued_at,
                    "granted": None if t.granted is None else list(t.granted),
                    "verified": t.verified,
                    "audience": None if t.audience is None else list(t.audience),
                    **(
                        {
                            "dpop_jkt": t.dpop_jkt,
                            "authorization_details": (
                                None
                                if t.authorization_details is None
                                else [dict(d) for d in t.authorization_details]
                            ),
                        }
                        if version >= 3
                        else {}
                    ),
                }
                for t in sorted(
                    self.tokens.values(), key=lambda t: (t.resource or "", sorted(t.scopes))
                )
            ],
            "id_token_claims": dict(self.id_token_claims),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if version >= 3:
            document["dpop_key"] = None if self.dpop_key is None else dict(self.dpop_key)
            document["authorization_details"] = [dict(d) for d in self.authorization_details]
        try:
            return json.dumps(
                document, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            # Name the problem, never the value (it may be a token).
            raise ConfigurationError(
                f"GrantRecord cannot be serialised ({type(exc).__name__}): strings must be "
                "valid Unicode and id_token_claims must hold JSON values"
            ) from None

    @classmethod
    def from_bytes(cls, data: bytes) -> GrantRecord:
        """Parse :meth:`to_bytes` output. Anything else raises :class:`VaultCorrupted`."""
        doc = _strict_json_object(data)
        version = doc.get("v")
        if type(version) is not int or version not in _MEMBERS_BY_VERSION:
            raise VaultCorrupted("grant record has an unknown format version")
        if set(doc) != _MEMBERS_BY_VERSION[version]:
            raise VaultCorrupted(f"grant record members are not those of format v{version}")
        try:
            tokens: dict[TokenKey, CachedToken] = {}
            for item in _list(doc["tokens"], "tokens"):
                token = _token_from_json(item, version)
                if token.key in tokens:
                    raise VaultCorrupted("grant record holds a token twice")
                tokens[token.key] = token
            claims = doc["id_token_claims"]
            if not isinstance(claims, dict):
                raise VaultCorrupted("grant record id_token_claims is not an object")
            refresh = _opt_str(doc["refresh_token"], "refresh_token")
            dpop_key = doc.get("dpop_key")
            if dpop_key is not None and not isinstance(dpop_key, dict):
                raise VaultCorrupted("grant record dpop_key is not an object")
            details = _object_list(doc.get("authorization_details", []), "authorization_details")
            return cls(
                issuer=_str(doc["issuer"], "issuer"),
                subject=_opt_str(doc["subject"], "subject"),
                scopes=tuple(_str_list(doc["scopes"], "scopes")),
                resources=tuple(_str_list(doc["resources"], "resources")),
                refresh_token=None if refresh is None else SecretStr(refresh),
                tokens=tokens,
                id_token_claims=claims,
                created_at=_number(doc["created_at"], "created_at"),
                updated_at=_number(doc["updated_at"], "updated_at"),
                client_id=_opt_str(doc.get("client_id"), "client_id"),
                dpop_key=dpop_key,
                authorization_details=details,
            )
        except ConfigurationError:
            raise VaultCorrupted("grant record content is invalid") from None


@dataclass(frozen=True, slots=True)
class VersionedGrant:
    """A :class:`GrantRecord` with the store version it was read or written at; pass
    ``version`` as ``expected_version`` to write it back (compare-and-swap)."""

    record: GrantRecord
    version: int


# -- strict parsing helpers ----------------------------------------------------------------

_RECORD_MEMBERS: Final = frozenset(
    {
        "v",
        "issuer",
        "subject",
        "scopes",
        "resources",
        "refresh_token",
        "tokens",
        "id_token_claims",
        "created_at",
        "updated_at",
    }
)
_TOKEN_MEMBERS: Final = frozenset(
    {"resource", "scopes", "value", "token_type", "expires_at", "issued_at"}
)
_TOKEN_MEMBERS_V2: Final = _TOKEN_MEMBERS | {"granted", "verified", "audience"}
_MEMBERS_BY_VERSION: Final = {
    1: _RECORD_MEMBERS,
    2: _RECORD_MEMBERS | {"client_id"},
    3: _RECORD_MEMBERS | {"client_id", "dpop_key", "authorization_details"},
}
_TOKEN_MEMBERS_BY_VERSION: Final = {
    1: _TOKEN_MEMBERS,
    2: _TOKEN_MEMBERS_V2,
    3: _TOKEN_MEMBERS_V2 | {"dpop_jkt", "authorization_details"},
}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise VaultCorrupted("grant record has a duplicate JSON member")
        obj[key] = value
    return obj


def _no_constant(_name: str) -> Any:
    raise VaultCorrupted("grant record has a non-standard JSON constant")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise VaultCorrupted("grant record has a number out of range")
    return value


def _strict_json_object(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise VaultCorrupted("grant record is not bytes")
    try:
        text = bytes(data).decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except VaultCorrupted:
        raise
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise VaultCorrupted("grant record is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise VaultCorrupted("grant record is not a JSON object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise VaultCorrupted(f"grant record {what} is not a string")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise VaultCorrupted(f"grant record {what} is not an array")
    return value


def _str_list(value: Any, what: str) -> list[str]:
    return [_str(v, what) for v in _list(value, what)]


def _object_list(value: Any, what: str) -> tuple[dict[str, Any], ...]:
    items = _list(value, what)
    if not all(isinstance(v, dict) for v in items):
        raise VaultCorrupted(f"grant record {what} holds a non-object")
    return tuple(items)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VaultCorrupted(f"grant record {what} is not a number")
    return float(value)


def _token_from_json(item: Any, version: int) -> CachedToken:
    if not isinstance(item, dict) or set(item) != _TOKEN_MEMBERS_BY_VERSION[version]:
        raise VaultCorrupted(f"grant record token members are not those of format v{version}")
    scopes = _str_list(item["scopes"], "token scopes")
    if len(set(scopes)) != len(scopes):
        raise VaultCorrupted("grant record token scopes repeat")
    expires_at = item["expires_at"]
    granted = item.get("granted")
    audience = item.get("audience")
    verified = item.get("verified", True)
    if not isinstance(verified, bool):
        raise VaultCorrupted("grant record token verified is not a boolean")
    details = item.get("authorization_details")
    return CachedToken(
        resource=_opt_str(item["resource"], "token resource"),
        scopes=frozenset(scopes),
        value=SecretStr(_str(item["value"], "token value")),
        token_type=_str(item["token_type"], "token type"),
        expires_at=None if expires_at is None else _number(expires_at, "token expires_at"),
        issued_at=_number(item["issued_at"], "token issued_at"),
        granted=None if granted is None else tuple(_str_list(granted, "token granted")),
        verified=verified,
        audience=None if audience is None else tuple(_str_list(audience, "token audience")),
        dpop_jkt=_opt_str(item.get("dpop_jkt"), "token dpop_jkt"),
        authorization_details=(
            None if details is None else _object_list(details, "token authorization_details")
        ),
    )
