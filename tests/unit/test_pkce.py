"""PKCE (agent_identity.oauth.pkce, RFC 7636): security item 15."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_identity.errors import ConfigurationError
from agent_identity.models import ServerMetadata
from agent_identity.oauth.authorize import authorization_url, start_authorization
from agent_identity.oauth.pkce import PkcePair, generate_pkce, s256_challenge

_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]+")
# RFC 7636 Appendix B: the 32 octets, their base64url verifier and its S256 challenge.
_APPENDIX_B_OCTETS = bytes(
    [116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186,
     22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121]
)  # fmt: skip
_APPENDIX_B_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
_APPENDIX_B_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_sec_15_verifier_length_and_alphabet() -> None:
    for _ in range(50):
        verifier = generate_pkce().verifier.get_secret_value()
        assert len(verifier) == 43  # 32 octets, base64url without padding
        assert _UNRESERVED.fullmatch(verifier)
        assert "=" not in verifier


def test_sec_15_verifier_fresh_per_call() -> None:
    pairs = [generate_pkce() for _ in range(500)]
    assert len({p.verifier.get_secret_value() for p in pairs}) == 500
    assert len({p.challenge for p in pairs}) == 500


def test_sec_15_challenge_matches_rfc7636_appendix_b() -> None:
    encoded = base64.urlsafe_b64encode(_APPENDIX_B_OCTETS).rstrip(b"=").decode()
    assert encoded == _APPENDIX_B_VERIFIER
    assert s256_challenge(_APPENDIX_B_VERIFIER) == _APPENDIX_B_CHALLENGE


def test_sec_15_generated_challenge_is_s256_of_verifier() -> None:
    pair = generate_pkce()
    assert pair.challenge == s256_challenge(pair.verifier.get_secret_value())
    assert len(pair.challenge) == 43
    assert _UNRESERVED.fullmatch(pair.challenge)


def test_sec_15_method_always_s256() -> None:
    assert generate_pkce().method == "S256"
    assert PkcePair.__dataclass_fields__["method"].default == "S256"


def test_sec_15_verifier_not_in_repr() -> None:
    pair = generate_pkce()
    verifier = pair.verifier.get_secret_value()
    assert verifier not in repr(pair)
    assert verifier not in str(pair)


@pytest.mark.parametrize(
    "verifier",
    [
        "",
        "a" * 42,  # too short
        "a" * 129,  # too long
        "a" * 42 + "=",  # padding is not in the unreserved set
        "a" * 42 + "+",
        "a" * 42 + "/",
        "a" * 42 + " ",
        "é" * 43,
    ],
)
def test_sec_15_invalid_verifier_refused(verifier: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        s256_challenge(verifier)
    if verifier:
        assert verifier not in str(info.value)


def test_sec_15_verifier_bounds_accepted() -> None:
    s256_challenge("a" * 43)
    s256_challenge("~._-" * 32)  # 128 characters


@given(st.text(alphabet="ABCxyz0189-._~", min_size=43, max_size=128))
@settings(max_examples=100)
def test_sec_15_challenge_shape_for_any_valid_verifier(verifier: str) -> None:
    challenge = s256_challenge(verifier)
    assert len(challenge) == 43
    assert _UNRESERVED.fullmatch(challenge)


def _metadata() -> ServerMetadata:
    return ServerMetadata(
        issuer="https://as.example",
        authorization_endpoint="https://as.example/authorize",
        token_endpoint="https://as.example/token",
        code_challenge_methods_supported=("plain", "S256"),
    )


def test_sec_15_never_plain_in_authorization_parameters() -> None:
    # Even when the AS lists ``plain`` first, the request uses S256 only.
    for scopes in ((), ("openid",), ("openid", "profile")):
        pending, params = start_authorization(
            _metadata(),
            client_id="c",
            redirect_uri="http://127.0.0.1:1/cb",
            scopes=scopes,
            now=0.0,
        )
        assert params["code_challenge_method"] == "S256"
        assert "plain" not in [str(v) for v in params.values()]
        assert params["code_challenge"] == s256_challenge(pending.code_verifier.get_secret_value())
        url = authorization_url("https://as.example/authorize", params)
        assert "plain" not in url
        assert pending.code_verifier.get_secret_value() not in url


def test_sec_15_extra_cannot_downgrade_method() -> None:
    with pytest.raises(ConfigurationError):
        start_authorization(
            _metadata(),
            client_id="c",
            redirect_uri="http://127.0.0.1:1/cb",
            scopes=(),
            now=0.0,
            extra={"code_challenge_method": "plain"},
        )
