"""Human approval of high-impact tool calls with OpenID CIBA (poll and ping).

- :class:`Action`, :func:`binding_message`: what the user approves, and the message shown
  on both sides, built from the call itself (:mod:`agent_identity.approval.action`);
- :class:`ApprovalPolicy`: which tools need approval (:mod:`agent_identity.approval.policy`);
- :class:`Approval`, :func:`request_approval`: the CIBA driver behind
  ``UserIdentity.approve`` with durable pending requests in the vault
  (:mod:`agent_identity.approval.flow`);
- :class:`PingReceiver`: the ping notification endpoint, as an ASGI app or a standalone
  loopback server (:mod:`agent_identity.approval.ping`).

The wire protocol itself is :mod:`agent_identity.oauth.ciba` (sans-IO). Security items
41-45 of the project's requirements.
"""

from agent_identity.approval.action import Action, binding_message
from agent_identity.approval.flow import Approval, purge_expired, request_approval
from agent_identity.approval.ping import PingReceiver
from agent_identity.approval.policy import ApprovalPolicy

__all__ = [
    "Action",
    "Approval",
    "ApprovalPolicy",
    "PingReceiver",
    "binding_message",
    "purge_expired",
    "request_approval",
]
