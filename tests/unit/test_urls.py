"""URL policy (agent_identity.oauth.urls): security items 1, 2, 3, 19 and 21."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_identity.errors import ConfigurationError, InsecureURLError, SSRFBlockedError
from agent_identity.oauth.urls import (
    canonical_resource_uri,
    check_browser_url,
    check_endpoint_url,
    check_loopback_redirect_uri,
    check_ssrf_literal,
    is_loopback_host,
    is_public_ip,
)

# --- security item 1: https for every endpoint, loopback http only after opt-in -----------


def test_sec_01_http_token_endpoint_refused() -> None:
    with pytest.raises(InsecureURLError, match="token endpoint") as info:
        check_endpoint_url("http://as.example.com/token?x=secret", what="token endpoint")
    message = str(info.value)
    assert "as.example.com" in message
    assert "secret" not in message


def test_sec_01_https_endpoint_returned_unchanged() -> None:
    url = "https://AS.example.com:8443/t1/token?a=b"
    assert check_endpoint_url(url) is url


def test_sec_01_loopback_http_allowed_only_with_opt_in() -> None:
    for url in ("http://127.0.0.1:8080/token", "http://[::1]:9000/", "http://localhost:1/x"):
        with pytest.raises(InsecureURLError, match="allow_insecure_loopback"):
            check_endpoint_url(url)
        assert check_endpoint_url(url, allow_insecure_loopback=True) == url


def test_sec_01_opt_in_does_not_allow_http_elsewhere() -> None:
    for url in ("http://10.0.0.1/", "http://example.com/", "http://127.1/", "http://2130706433/"):
        with pytest.raises(InsecureURLError):
            check_endpoint_url(url, allow_insecure_loopback=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@as.example.com/token",
        "https://as.example.com/token#frag",
        "https://as.example.com/token#",
        "https:///token",
        "https:as.example.com/token",
        "/token",
        "as.example.com/token",
        "https://as.example.com\\@evil.example/",
        "https://as.example.com /token",
        "https://as.exa\tmple.com/token",
        "https://as.example.com/\x00",
        "https://ex\u0430mple.com/",  # Cyrillic a: IDN must be given as xn--
        "https://as.example.com:99999/",
        "https://as.example.com:0/",
        "https://as.example.com:12a/",
        "https://[::1/",
        "https://[zz::1]/",
        "https://[fe80::1%25eth0]/",
        "https://a%2eb.example/",
        "ftp://as.example.com/",
        "",
    ],
)
def test_sec_01_malformed_or_unsafe_endpoints_refused(url: str) -> None:
    with pytest.raises(InsecureURLError):
        check_endpoint_url(url, allow_insecure_loopback=True)


def test_sec_01_userinfo_never_echoed() -> None:
    with pytest.raises(InsecureURLError) as info:
        check_endpoint_url("https://client:s3cr3t@as.example.com/token")
    assert "s3cr3t" not in str(info.value)


def test_non_string_refused() -> None:
    with pytest.raises(InsecureURLError):
        check_endpoint_url(b"https://as.example.com/")  # type: ignore[arg-type]


# --- security item 3: what we open in a browser ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript://as.example.com/%0Aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "vbscript:msgbox(1)",
    ],
)
def test_sec_03_dangerous_schemes_refused(url: str) -> None:
    with pytest.raises(InsecureURLError):
        check_browser_url(url, allow_insecure_loopback=True)


def test_sec_03_javascript_refused() -> None:
    with pytest.raises(InsecureURLError, match="javascript"):
        check_browser_url("javascript:fetch('//evil')")


def test_sec_03_data_refused() -> None:
    with pytest.raises(InsecureURLError, match="data"):
        check_browser_url("data:text/html;base64,PHNjcmlwdD4=")


def test_sec_03_file_refused() -> None:
    with pytest.raises(InsecureURLError, match="file"):
        check_browser_url("file:///C:/Windows/System32/calc.exe")


def test_sec_03_vbscript_refused() -> None:
    with pytest.raises(InsecureURLError, match="vbscript"):
        check_browser_url("vbscript:Execute")


@pytest.mark.parametrize(
    "url",
    [
        "https://as.example.com/authorize?client_id=a b",
        "https://as.example.com/authorize?x=\n",
        "https://as.example.com/authorize\r\n",
        " https://as.example.com/authorize",
        "http://as.example.com/authorize",
        "ms-settings:privacy",
        "mailto:a@example.com",
    ],
)
def test_sec_03_whitespace_control_and_other_schemes_refused(url: str) -> None:
    with pytest.raises(InsecureURLError):
        check_browser_url(url)


def test_sec_03_https_and_opted_in_loopback_accepted() -> None:
    url = "https://as.example.com/authorize?response_type=code&state=abc"
    assert check_browser_url(url) == url
    local = "http://127.0.0.1:4000/authorize?x=1"
    with pytest.raises(InsecureURLError):
        check_browser_url(local)
    assert check_browser_url(local, allow_insecure_loopback=True) == local


# --- security item 21: loopback redirect URIs -----------------------------------------------


@pytest.mark.parametrize("uri", ["http://127.0.0.1:53123/callback", "http://[::1]:8000/cb"])
def test_sec_21_loopback_redirect_uri_accepted(uri: str) -> None:
    assert check_loopback_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost:53123/callback",
        "http://127.0.0.2:53123/callback",
        "http://127.1:53123/callback",
        "https://127.0.0.1:53123/callback",
        "HTTP://127.0.0.1:53123/callback",
        "http://127.0.0.1/callback",
        "http://127.0.0.1:53123",
        "http://127.0.0.1:53123/callback?next=https://evil.example",
        "http://127.0.0.1:53123/callback#x",
        "http://u@127.0.0.1:53123/callback",
        "http://[::2]:53123/callback",
        "http://[::ffff:127.0.0.1]:53123/callback",
        "http://example.com:53123/callback",
    ],
)
def test_sec_21_non_literal_loopback_redirect_refused(uri: str) -> None:
    with pytest.raises(InsecureURLError):
        check_loopback_redirect_uri(uri)


def test_is_loopback_host() -> None:
    for host in ("127.0.0.1", "127.255.0.9", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("127.1", "2130706433", "::ffff:127.0.0.1", "10.0.0.1", "localhost.example", ""):
        assert not is_loopback_host(host), host


# --- security item 2: SSRF (literal hosts) --------------------------------------------------


def test_sec_02_metadata_ip_refused() -> None:
    with pytest.raises(SSRFBlockedError, match=r"169\.254\.169\.254"):
        check_ssrf_literal("https://169.254.169.254/latest/meta-data/", allow_private=False)


def test_sec_02_private_ip_refused() -> None:
    with pytest.raises(SSRFBlockedError):
        check_ssrf_literal("https://10.0.0.1/jwks", allow_private=False)


def test_sec_02_unique_local_ipv6_refused() -> None:
    with pytest.raises(SSRFBlockedError):
        check_ssrf_literal("https://[fc00::1]/jwks", allow_private=False)


def test_sec_02_ipv4_mapped_metadata_ip_refused() -> None:
    with pytest.raises(SSRFBlockedError, match=r"169\.254\.169\.254"):
        check_ssrf_literal("https://[::ffff:169.254.169.254]/", allow_private=False)
    with pytest.raises(SSRFBlockedError):
        check_ssrf_literal("https://[::ffff:a9fe:a9fe]/", allow_private=False)


@pytest.mark.parametrize(
    "host",
    [
        "2852039166",  # 169.254.169.254 as one decimal number
        "0xa9fea9fe",
        "0251.0376.0251.0376",  # octal
        "169.16689662",  # a.b form
        "2130706433",  # 127.0.0.1
        "0x7f.1",
        "017700000001",
        "127.1",
        "0",
        "169.254.169.254.",
    ],
)
def test_sec_02_decimal_integer_ip_hosts_refused(host: str) -> None:
    with pytest.raises(SSRFBlockedError):
        check_ssrf_literal(f"https://{host}/", allow_private=False)


def test_sec_02_ambiguous_numeric_host_refused() -> None:
    for host in ("1.2.3.4.5", "256.1.1.1", "09.1.1.1", "4294967296"):
        with pytest.raises(SSRFBlockedError, match="numeric"):
            check_ssrf_literal(f"https://{host}/", allow_private=False)


def test_sec_02_ipv6_loopback_refused() -> None:
    with pytest.raises(SSRFBlockedError):
        check_ssrf_literal("http://[::1]:6379/", allow_private=False)


def test_sec_02_ipv4_loopback_refused() -> None:
    with pytest.raises(SSRFBlockedError):
        check_ssrf_literal("http://127.0.0.1:6379/", allow_private=False)
    with pytest.raises(SSRFBlockedError):
        check_ssrf_literal("http://localhost:6379/", allow_private=False)


def test_sec_02_public_literals_and_names_pass() -> None:
    check_ssrf_literal("https://8.8.8.8/", allow_private=False)
    check_ssrf_literal("https://[2606:4700:4700::1111]/", allow_private=False)
    check_ssrf_literal("https://134744072/", allow_private=False)  # 8.8.8.8
    check_ssrf_literal("https://as.example.com/", allow_private=False)
    check_ssrf_literal("https://1.example/", allow_private=False)  # ends in a label


def test_sec_02_allow_private_disables_the_literal_check() -> None:
    check_ssrf_literal("http://10.0.0.1/", allow_private=True)
    check_ssrf_literal("http://[::1]/", allow_private=True)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0",
        "10.1.2.3",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.251",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "::10.0.0.1",
        "::ffff:0:a00:1",
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:7f00:1::",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::10.0.0.1",
        "64:ff9b:1::1",
        "100::1",
        "2001:db8::1",
        "2001::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
    ],
)
def test_sec_02_non_public_addresses(address: str) -> None:
    assert is_public_ip(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::8.8.8.8",
    ],
)
def test_public_addresses(address: str) -> None:
    assert is_public_ip(ipaddress.ip_address(address)) is True


def test_sec_02_scoped_ipv6_is_not_public() -> None:
    assert is_public_ip(ipaddress.IPv6Address("2606:4700::1%eth0")) is False


# --- security item 19: RFC 8707 canonical resource URIs -------------------------------------


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        ("HTTPS://API.Example.COM", "https://api.example.com"),
        ("https://api.example.com:443", "https://api.example.com"),
        ("https://api.example.com:443/", "https://api.example.com/"),
        ("http://api.example.com:80/v1", "http://api.example.com/v1"),
        ("https://api.example.com:80/v1", "https://api.example.com:80/v1"),
        ("http://api.example.com:443/v1", "http://api.example.com:443/v1"),
        (
            "https://api.example.com:8443/Path/To?Q=A&b=2",
            "https://api.example.com:8443/Path/To?Q=A&b=2",
        ),
        ("https://api.example.com:/x", "https://api.example.com/x"),
        ("https://api.example.com:0443/x", "https://api.example.com/x"),
        ("https://[2001:DB8::1]:443/mcp", "https://[2001:db8::1]/mcp"),
        ("https://api.example.com/mcp?", "https://api.example.com/mcp?"),
        ("http://127.0.0.1:8080/mcp", "http://127.0.0.1:8080/mcp"),
    ],
)
def test_sec_19_canonical_resource_uri(uri: str, canonical: str) -> None:
    assert canonical_resource_uri(uri) == canonical


@pytest.mark.parametrize(
    "uri",
    [
        "https://api.example.com/mcp#section",
        "https://api.example.com/mcp#",
        "/mcp",
        "api.example.com/mcp",
        "urn:example:resource",
        "ftp://api.example.com/",
        "https://user@api.example.com/",
        "https://",
        "",
    ],
)
def test_sec_19_invalid_resource_uri_refused(uri: str) -> None:
    with pytest.raises(ConfigurationError):
        canonical_resource_uri(uri)


# --- property tests: untrusted text never crashes with anything but our errors --------------

_url_like = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda scheme, host, port, rest: f"{scheme}://{host}{port}{rest}",
        st.sampled_from(["https", "http", "HTTPS", "javascript", "file", "data", ""]),
        st.one_of(
            st.from_regex(r"[A-Za-z0-9._\-\[\]:%@]{0,30}", fullmatch=True),
            st.ip_addresses().map(str),
            st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
            st.integers(min_value=0, max_value=2**40).map(str),
        ),
        st.sampled_from(["", ":", ":443", ":80", ":8080", ":99999", ":x"]),
        st.text(alphabet="/?#&=abc%:@\\ \t.", max_size=20),
    ),
)


@given(_url_like)
def test_arbitrary_text_only_raises_typed_errors(url: str) -> None:
    for allow in (False, True):
        with contextlib.suppress(InsecureURLError):
            assert check_endpoint_url(url, allow_insecure_loopback=allow) == url
        with contextlib.suppress(InsecureURLError):
            assert check_browser_url(url, allow_insecure_loopback=allow) == url
        with contextlib.suppress(InsecureURLError):  # SSRFBlockedError included
            check_ssrf_literal(url, allow_private=allow)
    with contextlib.suppress(InsecureURLError):
        assert check_loopback_redirect_uri(url) == url
    with contextlib.suppress(ConfigurationError):
        canonical_resource_uri(url)
    assert isinstance(is_loopback_host(url), bool)


@given(_url_like)
def test_canonicalisation_is_idempotent(url: str) -> None:
    try:
        once = canonical_resource_uri(url)
    except ConfigurationError:
        return
    assert canonical_resource_uri(once) == once
    assert once.startswith(("https://", "http://"))
    assert "#" not in once


@given(st.ip_addresses())
def test_endpoint_check_accepts_any_https_ip_literal(address: ipaddress._BaseAddress) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    url = f"https://{host}/x"
    assert check_endpoint_url(url) == url


@given(st.ip_addresses(v=4))
def test_sec_02_every_ipv4_literal_spelling_agrees_with_is_public_ip(
    address: ipaddress.IPv4Address,
) -> None:
    number = int(address)
    spellings = [str(address), str(number), hex(number), f"0{number:o}"]
    public = is_public_ip(address)
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert is_public_ip(mapped) == public
    for spelling in [*spellings, f"[{mapped}]"]:
        url = f"https://{spelling}/"
        if public:
            check_ssrf_literal(url, allow_private=False)
        else:
            with pytest.raises(SSRFBlockedError):
                check_ssrf_literal(url, allow_private=False)
