"""The delegation chain of a token: RFC 8693 §4.1 (``act``) and §4.4 (``may_act``).

A token issued by a token exchange with an actor names the acting party in its ``act``
claim. When the actor itself acted for someone else, ``act`` nests::

    {"sub": "alice", "act": {"sub": "agent-b", "act": {"sub": "agent-a"}}}

reads "agent-b acts for alice; before that, agent-a did". :class:`DelegationChain` holds
this OUTERMOST FIRST: ``actors[0]`` is the current actor (the top-level ``act``) and
``actors[1:]`` are the prior actors.

Security item 33 (RFC 8693 §4.1: "only the top-level claims and the current actor ... are
to be considered in authorization decisions"; prior actors are informational):

- authorization code must use :meth:`DelegationChain.authorization_view` (top-level claims
  with ``act`` reduced to the current actor) or :attr:`DelegationChain.current_actor`;
- :attr:`DelegationChain.history` and :meth:`DelegationChain.describe` are for logs and
  audit only — record the whole chain, decide on the current actor.

``may_act`` (RFC 8693 §4.4) says who MAY act for the subject; it is not a delegation that
happened, so it is kept apart from the chain (:attr:`DelegationChain.may_act`).

All mappings here are read-only (nested objects become read-only mappings, arrays become
tuples); :meth:`DelegationChain.authorization_view` returns fresh plain ``dict``/``list``
values that serialise as JSON. A chain never holds the token it was read from; ``repr``
shows subjects and claim names only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from pydantic import SecretStr

from agent_identity.errors import InvalidTokenError
from agent_identity.oauth.jwt import peek_claims

__all__ = ["MAX_DELEGATION_DEPTH", "Actor", "DelegationChain"]

#: The most actors (nested ``act`` objects) a chain may hold; deeper tokens are refused.
MAX_DELEGATION_DEPTH: Final = 16
# Nesting limit for claim values other than ``act`` (JSON objects and arrays).
_MAX_VALUE_DEPTH: Final = 32

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def _freeze(value: Any, depth: int = 0) -> Any:
    """A read-only deep copy of a JSON-like value (objects -> mappings, arrays -> tuples)."""
    if depth > _MAX_VALUE_DEPTH:
        raise InvalidTokenError("token claims are nested too deeply")
    if isinstance(value, Mapping):
        frozen: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidTokenError("token claim names must be strings")
            frozen[key] = _freeze(item, depth + 1)
        return MappingProxyType(frozen)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item, depth + 1) for item in value)
    return value


def _thaw(value: Any) -> Any:
    """A plain, JSON-serialisable deep copy of a frozen value."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _printable(text: str) -> str:
    # Subjects come from tokens: keep control characters out of log lines.
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


@dataclass(frozen=True, slots=True, repr=False)
class Actor:
    """One acting party: the ``sub`` of an ``act`` object (RFC 8693 §4.1) and its other
    members (``claims``: e.g. ``iss``, ``client_id``; never the nested ``act``)."""

    subject: str
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject:
            raise InvalidTokenError("actor sub must be a non-empty string")
        if not isinstance(self.claims, Mapping):
            raise InvalidTokenError("actor claims must be a mapping")
        claims = {k: v for k, v in self.claims.items() if k not in ("sub", "act")}
        object.__setattr__(self, "claims", _freeze(claims))

    def __repr__(self) -> str:
        return f"Actor(subject={self.subject!r}, claims={sorted(self.claims)!r})"


def _act_object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidTokenError(f"{where} must be a JSON object (RFC 8693 §4.1)")
    subject = value.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError(f"{where} must have a non-empty string sub (RFC 8693 §4.1)")
    return value


@dataclass(frozen=True, slots=True, repr=False)
class DelegationChain:
    """Who a token is about (``subject``) and who acts for them (``actors``, current
    actor first, then prior actors: RFC 8693 §4.1).

    ``claims`` holds the top-level claims (with ``sub``, without ``act``), read-only.
    Authorization decisions may use only :meth:`authorization_view` /
    :attr:`current_actor` (security item 33); :attr:`history` is informational.
    """

    subject: str | None
    actors: tuple[Actor, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, hash=False)

    def __post_init__(self) -> None:
        if self.subject is not None and (not isinstance(self.subject, str) or not self.subject):
            raise InvalidTokenError("sub must be a non-empty string")
        actors = tuple(self.actors)
        if not all(isinstance(a, Actor) for a in actors):
            raise InvalidTokenError("actors must be Actor values")
        if len(actors) > MAX_DELEGATION_DEPTH:
            raise InvalidTokenError(
                f"delegation chain is deeper than {MAX_DELEGATION_DEPTH} actors"
            )
        if not isinstance(self.claims, Mapping):
            raise InvalidTokenError("claims must be a mapping")
        claims = {k: v for k, v in self.claims.items() if k not in ("act", "sub")}
        if self.subject is not None:
            claims["sub"] = self.subject
        if "may_act" in claims and not isinstance(claims["may_act"], Mapping):
            raise InvalidTokenError("may_act must be a JSON object (RFC 8693 §4.4)")
        object.__setattr__(self, "actors", actors)
        object.__setattr__(self, "claims", _freeze(claims))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> DelegationChain:
        """Read the chain from a token's claims set.

        ``act`` (and each nested ``act``) must be a JSON object with a non-empty string
        ``sub``; at most :data:`MAX_DELEGATION_DEPTH` actors; ``sub`` (if present) a
        non-empty string; ``may_act`` (if present) an object; other claim values nested
        at most 32 levels deep.

        :raises InvalidTokenError: the claims break these rules. Messages never quote claim
            values.
        """
        if not isinstance(claims, Mapping):
            raise InvalidTokenError("token claims must be a JSON object")
        subject = claims.get("sub")
        if "sub" in claims and (not isinstance(subject, str) or not subject):
            raise InvalidTokenError("token sub must be a non-empty string")
        actors: list[Actor] = []
        container: Mapping[str, Any] = claims
        where = "act"
        while "act" in container:
            if len(actors) == MAX_DELEGATION_DEPTH:
                raise InvalidTokenError(
                    f"delegation chain is deeper than {MAX_DELEGATION_DEPTH} actors"
                )
            container = _act_object(container["act"], where)
            actors.append(Actor(container["sub"], container))
            where = "nested act"
        return cls(subject, tuple(actors), claims)

    @classmethod
    def from_token(cls, token: str | SecretStr) -> DelegationChain:
        """Read the chain from a JWS-compact JWT WITHOUT verifying it.

        Uses :func:`~agent_identity.oauth.jwt.peek_claims`: no signature, issuer, audience
        or expiry check. Meant for display, logging and audit of tokens this client itself
        received over TLS from its own authorization server (e.g. a token exchange
        response); never for authorizing a token presented by someone else — a resource
        server must validate the token first and then call :meth:`from_claims`.

        :raises InvalidTokenError: not a JWT, or its claims have a malformed ``act``.
        """
        value = token.get_secret_value() if isinstance(token, SecretStr) else token
        return cls.from_claims(peek_claims(value))

    # ------------------------------------------------------------------ views

    @property
    def current_actor(self) -> Actor | None:
        """The party acting now (the top-level ``act``), or ``None`` if not delegated."""
        return self.actors[0] if self.actors else None

    @property
    def history(self) -> tuple[Actor, ...]:
        """Prior actors, most recent first (nested ``act``). Informational only: never
        base an authorization decision on it (RFC 8693 §4.1, security item 33)."""
        return self.actors[1:]

    @property
    def is_delegated(self) -> bool:
        """Whether someone acts for the subject (an ``act`` claim is present)."""
        return bool(self.actors)

    @property
    def may_act(self) -> Mapping[str, Any] | None:
        """The ``may_act`` claim (RFC 8693 §4.4), read-only, or ``None``: who is allowed
        to become an actor for the subject. Not part of the chain."""
        value = self.claims.get("may_act")
        return value if isinstance(value, Mapping) else None

    def authorization_view(self) -> dict[str, Any]:
        """The claims an authorization decision may use (security item 33).

        The top-level claims, with ``act`` (if delegated) reduced to the current actor
        ``{"sub": ..., <its other members>}`` and no nested ``act``. A fresh plain
        ``dict`` (JSON-serialisable) on every call.
        """
        view: dict[str, Any] = _thaw(self.claims)
        actor = self.current_actor
        if actor is not None:
            view["act"] = {**_thaw(actor.claims), "sub": actor.subject}
        return view

    def describe(self) -> str:
        """A one-line description for logs and audit: ``"alice via agent-b via agent-a"``
        (subject, then the current actor, then prior actors). Control characters are
        escaped."""
        parts = [_printable(self.subject) if self.subject is not None else "<no sub>"]
        parts.extend(_printable(actor.subject) for actor in self.actors)
        return " via ".join(parts)

    def __repr__(self) -> str:
        return (
            f"DelegationChain(subject={self.subject!r}, "
            f"actors={tuple(a.subject for a in self.actors)!r})"
        )
