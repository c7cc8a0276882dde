"""Consent from a Jupyter notebook: show a clickable link, await the loopback callback.

The link is rendered with IPython's display machinery when available (install the
``notebook`` extra), and printed otherwise. The callback is received by the same one-shot
loopback listener as :class:`~agent_identity.consent.LoopbackConsent`, so the notebook's
kernel must run on the machine whose browser opens the link. For remote kernels, use
:class:`~agent_identity.consent.DeviceCodeConsent`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from agent_identity.consent.base import ConsentFlow
from agent_identity.consent.loopback import LoopbackConsent

__all__ = ["NotebookConsent"]


def _show_link(url: str) -> None:
    try:
        from IPython import display as ipython_display
    except ImportError:
        print(f"Open this link to approve access: {url}", flush=True)
        return
    shown: Any = ipython_display  # IPython ships without complete type hints
    shown.display(
        shown.HTML(
            f'<p>The agent needs your approval. <a href="{escape(url, quote=True)}" '
            'target="_blank" rel="noopener noreferrer">Open the consent page</a>.</p>'
        )
    )


class NotebookConsent:
    """Shows the consent link in the notebook output and waits for the redirect."""

    def __init__(self, *, timeout: float = 600.0) -> None:
        self._loopback = LoopbackConsent(browser=_show_link, timeout=timeout)

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        await self._loopback.obtain_consent(flow)
