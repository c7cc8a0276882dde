"""URL policy: which URLs the SDK may call, open for a user, listen on, or name as a resource.

Pure functions, no I/O. The I/O layer (``agent_identity._http``) applies them before every
request; the protocol modules apply them to URLs found in metadata.

- :func:`check_endpoint_url`: OAuth endpoints are ``https`` only, except ``http`` to a
  loopback host after an explicit opt-in (OAuth 2.1 §1.5, RFC 9700 §2.6; security item 1).
- :func:`check_browser_url`: URLs opened for a human are ``https`` (or loopback ``http``);
  ``javascript:``, ``data:``, ``file:``, ``vbscript:`` and everything else are refused
  (RFC 9700 §4.11; security item 3).
- :func:`check_loopback_redirect_uri`: native-app redirect URIs use an IP literal, never
  ``localhost`` (RFC 8252 §7.3, §8.3; security item 21).
- :func:`canonical_resource_uri`: the RFC 8707 §2 resource indicator in canonical form
  (security item 19).
- :func:`is_public_ip` and :func:`check_ssrf_literal`: server-supplied URLs must not reach
  private, loopback or link-local addresses (RFC 9700 §4.17 SSRF; security item 2).
- :func:`normalized_path` and :func:`lenient_path`: two readings of a percent-encoded path
  (RFC 3986 §6.2.2 normal form; the most lenient server's reading) used to decide whether
  a path stays under another (security items 13 and 23).

Every URL accepted here is plain ASCII without whitespace, control characters or
backslashes, so that this module and the HTTP client cannot disagree about where a URL
points (a parser differential is a classic SSRF bypass). Internationalised host names
must be given in their IDNA ("xn--") form. Error messages name the URL's scheme and host,
never its query or userinfo, which may carry secrets.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InsecureURLError,
    SSRFBlockedError,
)

__all__ = [
    "canonical_resource_uri",
    "check_browser_url",
    "check_endpoint_url",
    "check_loopback_redirect_uri",
    "check_ssrf_literal",
    "is_loopback_host",
    "is_public_ip",
    "lenient_path",
    "normalized_path",
    "path_is_ambiguous",
    "remove_dot_segments",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"https": 443, "http": 80}
_NEVER_OPENED = frozenset({"javascript", "data", "file", "vbscript", "blob", "filesystem"})
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"0[xX][0-9A-Fa-f]*")

# IPv4 ranges that are never public (RFC 6890 and its updates). Listed explicitly rather
# than relying on ``ipaddress.is_global``, whose answers changed across Python releases.
_V4_NOT_PUBLIC = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata services live here)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation TEST-NET-1
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation TEST-NET-2
        "203.0.113.0/24",  # documentation TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast address
    )
)

# IPv6 ranges that are never public. Ranges that embed an IPv4 address are handled
# separately (the embedded address decides).
_V6_NOT_PUBLIC = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, benchmarking, ...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_V6_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_V6_COMPATIBLE = ipaddress.IPv6Network("::/96")
_V6_6TO4 = ipaddress.IPv6Network("2002::/16")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class _Parts:
    scheme: str  # lower-case
    host: str  # as written, without brackets
    bracketed: bool  # an IPv6 literal
    port: int | None
    path: str
    query: str | None  # None when the URL has no "?"
    userinfo: bool
    fragment: bool


def _origin_for_message(parts: _Parts) -> str:
    host = f"[{parts.host}]" if parts.bracketed else parts.host
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


def _split(url: object, error: type[AgentIdentityError], what: str) -> _Parts:
    """Split an absolute hierarchical URL (RFC 3986 §3) strictly, or raise ``error``."""
    if not isinstance(url, str):
        raise error(f"{what} URL must be a string")
    if not url:
        raise error(f"{what} URL is empty")
    for ch in url:
        if ord(ch) <= 0x20 or ord(ch) >= 0x7F or ch == "\\":
            raise error(
                f"{what} URL contains whitespace, a control character, a backslash or a "
                "non-ASCII character (give internationalised host names in IDNA form)"
            )
    try:
        split = urlsplit(url)
    except ValueError:
        raise error(f"{what} URL cannot be parsed") from None
    scheme = split.scheme.lower()
    if not scheme:
        raise error(f"{what} URL is not absolute (no scheme)")
    if not url[len(split.scheme) + 1 :].startswith("//"):
        raise error(f"{what} URL has no host (scheme {scheme[:16]!r})")
    netloc = split.netloc
    userinfo = "@" in netloc
    hostport = netloc.rpartition("@")[2]
    bracketed = hostport.startswith("[")
    if bracketed:
        host, close, rest = hostport[1:].partition("]")
        if not close:
            raise error(f"{what} URL has an unterminated IPv6 literal")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise error(f"{what} URL has an invalid IPv6 literal") from None
        if "%" in host:
            raise error(f"{what} URL has an IPv6 zone identifier")
        if rest and not rest.startswith(":"):
            raise error(f"{what} URL has garbage after its IPv6 literal")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = hostport.partition(":")
        port_text = port_text_raw if colon else None
        if not host:
            raise error(f"{what} URL has no host (scheme {scheme[:16]!r})")
        if not _HOST_NAME.fullmatch(host):
            raise error(f"{what} URL has an invalid host")
    port: int | None = None
    if port_text:  # an empty port (``https://host:/``) means the default one
        if not _DIGITS.fullmatch(port_text) or len(port_text) > 5:
            raise error(f"{what} URL has an invalid port")
        port = int(port_text)
        if not 0 < port < 65536:
            raise error(f"{what} URL has an invalid port")
    return _Parts(
        scheme=scheme,
        host=host,
        bracketed=bracketed,
        port=port,
        path=split.path,
        query=split.query if "?" in url else None,
        userinfo=userinfo,
        fragment="#" in url,
    )


def _strict_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, a dotted-quad in ``127.0.0.0/8`` and ``::1`` (bracketed or not).

    Only the canonical literal forms count (``127.1`` or ``2130706433`` do not): this is the
    test that lets plain ``http`` through. Listeners must still bind the IP literal, not the
    name ``localhost`` (RFC 8252 §8.3; security item 21).
    """
    if not isinstance(host, str):
        return False
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if name.lower() in ("localhost", "localhost."):
        return True
    address = _strict_ip(name)
    if isinstance(address, ipaddress.IPv6Address):
        return address == ipaddress.IPv6Address("::1")
    return address is not None and address.is_loopback


def _require_web_scheme(
    parts: _Parts, *, allow_insecure_loopback: bool, what: str, error: type[AgentIdentityError]
) -> None:
    where = _origin_for_message(parts)
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        if allow_insecure_loopback and is_loopback_host(parts.host):
            return
        if is_loopback_host(parts.host):
            raise error(
                f"{what} {where} uses http: allowed for loopback hosts only with the explicit "
                "opt-in allow_insecure_loopback=True"
            )
        raise error(f"{what} {where} must use https")
    raise error(f"{what} URL scheme {parts.scheme[:16]!r} is not allowed: https is required")


def check_endpoint_url(
    url: str, *, allow_insecure_loopback: bool = False, what: str = "endpoint"
) -> str:
    """Check that ``url`` may be used as an OAuth endpoint and return it unchanged.

    Rules (OAuth 2.1 §1.5 and §3.1; RFC 8414 §2; RFC 9700 §2.6; security item 1): an
    absolute ``https`` URL with a host, no userinfo and no fragment. Plain ``http`` only to
    a loopback host (:func:`is_loopback_host`) and only when ``allow_insecure_loopback`` is
    set, the documented opt-in for local test servers.

    Raises :class:`InsecureURLError`; its message names ``what``, the scheme and the host,
    never the query string.
    """
    parts = _split(url, InsecureURLError, what)
    _require_web_scheme(
        parts, allow_insecure_loopback=allow_insecure_loopback, what=what, error=InsecureURLError
    )
    if parts.userinfo:
        raise InsecureURLError(f"{what} {_origin_for_message(parts)} URL must not carry userinfo")
    if parts.fragment:
        raise InsecureURLError(f"{what} {_origin_for_message(parts)} URL must not have a fragment")
    return url


def check_browser_url(url: str, *, allow_insecure_loopback: bool = False) -> str:
    """Check a URL before it is handed to a browser for a human; return it unchanged.

    Only ``https`` (or loopback ``http`` with ``allow_insecure_loopback``), so that a
    malicious metadata document cannot make us open ``javascript:``, ``data:``, ``file:``
    or ``vbscript:`` URLs, local programs or files (RFC 9700 §4.11; security item 3). The
    URL must be free of whitespace and control characters, which some launchers split or
    interpret. Raises :class:`InsecureURLError`.
    """
    what = "authorization URL"
    if isinstance(url, str):
        scheme = url.partition(":")[0].strip().lower()
        if scheme in _NEVER_OPENED:
            raise InsecureURLError(f"{what} scheme {scheme!r} is never opened in a browser")
    return check_endpoint_url(url, allow_insecure_loopback=allow_insecure_loopback, what=what)


def check_loopback_redirect_uri(uri: str) -> str:
    """Check a native-app loopback redirect URI and return it unchanged.

    Accepted: ``http://127.0.0.1:PORT/path`` and ``http://[::1]:PORT/path`` with an explicit
    port, a non-empty path, and no userinfo, query or fragment (RFC 8252 §7.3, §8.3;
    security item 21). The name ``localhost`` is refused: it may resolve elsewhere, and the
    listener binds the IP literal. Raises :class:`InsecureURLError`.
    """
    what = "redirect URI"
    parts = _split(uri, InsecureURLError, what)
    if not uri.startswith("http://"):
        raise InsecureURLError(f"{what} must start with 'http://' (loopback redirect)")
    literal = _strict_ip(parts.host)
    loopback_literal = (parts.bracketed and literal == ipaddress.IPv6Address("::1")) or (
        not parts.bracketed and parts.host == "127.0.0.1"
    )
    if not loopback_literal:
        raise InsecureURLError(f"{what} host must be the IP literal 127.0.0.1 or [::1]")
    if parts.port is None:
        raise InsecureURLError(f"{what} must name its port")
    if parts.userinfo or parts.fragment or parts.query is not None:
        raise InsecureURLError(f"{what} must not carry userinfo, a query or a fragment")
    if not parts.path.startswith("/"):
        raise InsecureURLError(f"{what} must have a path")
    return uri


def canonical_resource_uri(uri: str) -> str:
    """Return the RFC 8707 §2 resource indicator for ``uri`` in canonical form.

    The indicator is an absolute URI without a fragment. Canonical form here: lower-case
    scheme and host, the default port (443 for https, 80 for http) dropped, path and query
    kept as written (an empty path stays empty). Only ``http`` and ``https`` resources are
    accepted; which of them may be used is the transport policy's decision. The function is
    idempotent and pure, so results are memoised (every tool call canonicalises its
    resource). Raises :class:`ConfigurationError`.
    """
    if not isinstance(uri, str):
        raise ConfigurationError("resource URI must be a string")
    return _canonical_resource_uri(uri)


@functools.lru_cache(maxsize=1024)
def _canonical_resource_uri(uri: str) -> str:
    what = "resource"
    parts = _split(uri, ConfigurationError, what)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(f"{what} URI scheme {parts.scheme[:16]!r} is not http or https")
    if parts.fragment:
        raise ConfigurationError(f"{what} URI must not have a fragment (RFC 8707 §2)")
    if parts.userinfo:
        raise ConfigurationError(f"{what} URI must not carry userinfo")
    host = parts.host.lower()
    if parts.bracketed:
        host = f"[{host}]"
    port = "" if parts.port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{parts.port}"
    query = "" if parts.query is None else f"?{parts.query}"
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


def is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for a globally routable unicast address that is safe to fetch from.

    False for private, loopback, link-local, multicast, reserved, unspecified, shared
    (``100.64.0.0/10``), benchmarking and documentation ranges, IPv6 site-local and
    unique-local (``fc00::/7``), and IPv6 addresses that embed a non-public IPv4 address
    (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64
    ``64:ff9b::/96``). RFC 6890 registries; RFC 9700 §4.17 (SSRF).
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in net for net in _V4_NOT_PUBLIC)
    if not isinstance(ip, ipaddress.IPv6Address):
        return False
    if ip.scope_id:
        return False
    embedded: ipaddress.IPv4Address | None = None
    if ip in _V6_MAPPED:
        embedded = ip.ipv4_mapped
    elif ip in _V6_NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    elif ip in _V6_6TO4:
        embedded = ip.sixtofour
    elif ip in _V6_COMPATIBLE:
        if int(ip) <= 1:  # :: and ::1
            return False
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if embedded is not None:
        return is_public_ip(embedded)
    return not any(ip in net for net in _V6_NOT_PUBLIC)


def _ipv4_number(part: str) -> int | None:
    if not part:
        return None
    if part[:2].lower() == "0x":
        return int(part[2:], 16) if part[2:] else 0
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part) if part.isdigit() else None


def _ends_in_number(host: str) -> bool:
    labels = host.split(".")
    if labels and labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1] if labels else ""
    return bool(_DIGITS.fullmatch(last) or _HEX.fullmatch(last))


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse the IPv4 forms that resolvers accept (inet_aton; WHATWG URL "IPv4 parser"):
    one to four dot-separated decimal, octal (leading 0) or hex (0x) numbers, the last
    filling the remaining bytes, e.g. ``2852039166``, ``0251.0376.0251.0376``, ``127.1``."""
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not 1 <= len(labels) <= 4:
        return None
    numbers = [_ipv4_number(label) for label in labels]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1]
    for index, value in enumerate(values[:-1]):
        address += value * 256 ** (3 - index)
    return ipaddress.IPv4Address(address)


def check_ssrf_literal(url: str, *, allow_private: bool) -> None:
    """Refuse a URL whose host is a non-public IP literal, in any spelling.

    Covers dotted quads, the integer/octal/hex forms resolvers accept
    (``http://2852039166/`` is ``169.254.169.254``), bracketed IPv6 including IPv4-mapped
    forms, and the name ``localhost``. A host that looks numeric but is not a valid address
    is refused too. Names are left to resolution-time checks. Does nothing when
    ``allow_private`` is set. RFC 9700 §4.17; security item 2. Raises
    :class:`SSRFBlockedError` (or :class:`InsecureURLError` for an unparsable URL).
    """
    parts = _split(url, InsecureURLError, "server-supplied")
    if allow_private:
        return
    where = _origin_for_message(parts)
    address: IPAddress | None
    if parts.bracketed:
        address = ipaddress.IPv6Address(parts.host)
    elif _ends_in_number(parts.host):
        address = _legacy_ipv4(parts.host)
        if address is None:
            raise SSRFBlockedError(f"server-supplied URL {where} has an ambiguous numeric host")
    else:
        name = parts.host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            raise SSRFBlockedError(f"server-supplied URL {where} points at a loopback name")
        return
    if not is_public_ip(address):
        raise SSRFBlockedError(
            f"server-supplied URL {where} points at a non-public address ({address})"
        )


# -- paths ------------------------------------------------------------------------------


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for the paths of absolute URLs (empty, or starting with ``/``)."""
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments[1:], start=1):
        last = index == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output) if path.startswith("/") or output else ""


def normalized_path(raw: str) -> str | None:
    """The RFC 3986 §6.2.2 normal form of a raw (percent-encoded) path: escapes of
    unreserved characters decoded, other escapes in upper case, dot segments removed.
    ``None`` for a stray ``%`` (no normal form)."""
    if "%" in _PERCENT.sub("", raw):
        return None

    def fix(match: re.Match[str]) -> str:
        octet = int(match.group(1), 16)
        return chr(octet) if octet in _UNRESERVED else f"%{match.group(1).upper()}"

    return remove_dot_segments(_PERCENT.sub(fix, raw))


def _lenient_segments(raw: str) -> list[str]:
    text = raw
    for _ in range(4):
        decoded = _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), text)
        if decoded == text:
            break
        text = decoded
    text = text.replace("\\", "/")
    return [segment.partition(";")[0] for segment in text.split("/")]


def lenient_path(raw: str) -> str:
    """The path as the most lenient server could read it: every escape decoded (again
    and again: double encoding), ``\\`` taken as ``/``, ``;`` parameters dropped from
    each segment (``..;/``), then dot segments removed. Characters stand for octets
    one-to-one (as Latin-1 would)."""
    return remove_dot_segments("/".join(_lenient_segments(raw)))


def path_is_ambiguous(raw: str) -> bool:
    """Whether a raw path could point elsewhere once a server decodes it: a stray ``%``,
    a dot segment (``.``, ``..``, also encoded or with ``;`` parameters), or an encoded
    slash or backslash that would split a segment."""
    if normalized_path(raw) is None:
        return True
    segments = _lenient_segments(raw)
    if len(segments) != len(raw.split("/")):
        return True
    return any(segment in (".", "..") for segment in segments)
