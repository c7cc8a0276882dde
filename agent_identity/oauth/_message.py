"""Plain HTTP request/response values exchanged between the sans-IO protocol modules
(``agent_identity.oauth``) and the single I/O driver (``agent_identity._http``).

The protocol modules build :class:`HttpRequest` values and parse :class:`HttpResponse`
values; they never perform I/O. ``repr`` of a request hides form values and credentials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["HttpRequest", "HttpResponse"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request to send.

    ``form`` is sent as ``application/x-www-form-urlencoded`` (a sequence value repeats the
    parameter, as RFC 8707 ``resource`` may); ``headers`` never carry an
    ``Authorization`` value in ``repr``. ``server_supplied`` marks URLs learned from a server
    (metadata, challenges), which the I/O layer checks against the SSRF policy.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str | Sequence[str]] | None = None
    #: A body other than a form (e.g. JSON for RFC 7591 registration); its media type goes
    #: in ``headers["content-type"]``. Mutually exclusive with ``form``.
    body: bytes | None = None
    server_supplied: bool = False
    #: Safe to send again after a transport failure or a 5xx/429 (GET, revocation, ...).
    idempotent: bool = False

    def __post_init__(self) -> None:
        if self.form is not None and self.body is not None:
            raise ValueError("an HttpRequest has a form or a body, not both")

    def __repr__(self) -> str:
        names = sorted(self.form) if self.form else []
        return f"HttpRequest(method={self.method!r}, url={self.url!r}, form_fields={names!r})"

    def form_pairs(self) -> list[tuple[str, str]]:
        """The form as ``(name, value)`` pairs, sequence values expanded in order."""
        pairs: list[tuple[str, str]] = []
        for name, value in (self.form or {}).items():
            if isinstance(value, str):
                pairs.append((name, value))
            else:
                pairs.extend((name, item) for item in value)
        return pairs


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete HTTP response. Header names are lower-case."""

    status_code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def __repr__(self) -> str:
        return f"HttpResponse(status_code={self.status_code}, length={len(self.content)})"
