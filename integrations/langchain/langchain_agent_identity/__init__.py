"""langchain-agent-identity: LangChain tools that act for a user, with the user's narrowest
token, human approval and an audit record per call (built on ``agent-identity``).

::

    from agent_identity import BlockingIdentityClient
    from langchain_agent_identity import current_token, protect

    @tool
    def list_events(day: str) -> str:
        \"\"\"List the user's calendar events on a day.\"\"\"
        token = current_token()                # never seen by the model
        ...

    calendar = protect(list_events, identity=identity,
                       resource="https://calendar.example/api", scopes="calendar.read")
    calendar.invoke({"day": "monday"}, config={"configurable": {"user_id": "alice"}})

LangChain v1 agents (``create_agent``) can use :class:`IdentityMiddleware` instead: the
same implementation, configured with a mapping of tool names to requirements.
"""

from agent_identity.tools import (
    ApprovalOptions,
    ToolGuard,
    ToolRequirement,
    current_auth,
    current_token,
    current_tool_context,
)

from ._context import acting_for
from ._errors import AccessRefused, HumanActionRequired, IdentityToolError, UserUnknown
from ._tool import ProtectedTool, protect


def __getattr__(name: str) -> object:
    # The middleware needs the ``langchain`` package (create_agent); protect() does not.
    if name == "IdentityMiddleware":
        from ._middleware import IdentityMiddleware

        return IdentityMiddleware
    raise AttributeError(f"module 'langchain_agent_identity' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "AccessRefused",
    "ApprovalOptions",
    "HumanActionRequired",
    "IdentityMiddleware",
    "IdentityToolError",
    "ProtectedTool",
    "ToolGuard",
    "ToolRequirement",
    "UserUnknown",
    "__version__",
    "acting_for",
    "current_auth",
    "current_token",
    "current_tool_context",
    "protect",
]
