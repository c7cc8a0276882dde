"""Consent from a Jupyter notebook: show a clickable link, await the loopback callback.

The link is rendered with IPython's display machinery when available (install the
``notebook`` extra), and printed otherwise. The callback is received by the same one-shot
loopback listener as :class:`~agent_identity.consent.LoopbackConsent`, so the notebook's
kernel must run on the machine whose browser opens the link. For remote kernels, use
:class:`~agent_identity.consent.DeviceCodeConsent`.
"""

from __future__ import annotations

import inspect
from html import escape
from typing import Any

from agent_identity.consent.base import ConsentFlow
from agent_identity.consent.loopback import BrowserOpener, LoopbackConsent

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
    """Shows the consent link in the notebook output and waits for the redirect.

    ``after_show`` is called with the URL once the link is shown: a demo or a test can
    play the user clicking it (``NotebookConsent(after_show=DevBrowser("alice"))`` with
    the bundled dev server); leave it out for a real user.
    """

    def __init__(self, *, timeout: float = 600.0, after_show: BrowserOpener | None = None) -> None:
        self._after_show = after_show
        self._loopback = LoopbackConsent(browser=self._show, timeout=timeout)

    async def _show(self, url: str) -> None:
        presenter: Any = _show_link  # replaceable (tests); may be async
        shown = presenter(url)
        if inspect.isawaitable(shown):
            await shown
        if self._after_show is not None:
            clicked = self._after_show(url)
            if inspect.isawaitable(clicked):
                await clicked

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        await self._loopback.obtain_consent(flow)
