"""Device code consent for headless agents (RFC 8628).

The agent shows a short verification URI and a user code; the user approves on any
device with a browser (their phone, laptop). No redirect URI, no listener, no browser on
the agent's machine. Polling honours ``interval`` and ``slow_down`` and stops at expiry.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from agent_identity.consent.base import ConsentFlow
from agent_identity.models import DeviceAuthorization
from agent_identity.oauth.urls import check_browser_url

__all__ = ["DeviceCodeConsent", "DevicePrompt"]

#: Called with the device authorization to show the user what to do.
DevicePrompt = Callable[[DeviceAuthorization], Awaitable[Any] | Any]


def _print_prompt(authorization: DeviceAuthorization) -> None:
    print(
        f"\nTo let the agent act for you, visit {authorization.verification_uri}\n"
        f"and enter the code: {authorization.user_code}\n",
        file=sys.stderr,
        flush=True,
    )


class DeviceCodeConsent:
    """Runs the device authorization grant; ``prompt`` shows the code (stderr by default)."""

    def __init__(self, *, prompt: DevicePrompt | None = None) -> None:
        self._prompt: DevicePrompt = prompt or _print_prompt

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        authorization = await flow.start_device_authorization()
        check_browser_url(
            authorization.verification_uri, allow_insecure_loopback=flow.allow_insecure_loopback
        )
        if authorization.verification_uri_complete is not None:
            check_browser_url(
                authorization.verification_uri_complete,
                allow_insecure_loopback=flow.allow_insecure_loopback,
            )
        result = self._prompt(authorization)
        if inspect.isawaitable(result):
            await result
        await flow.wait_for_device_approval(authorization)
