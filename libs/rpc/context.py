"""The request context that travels with every message: who asked, and which request."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

from pydantic import BaseModel, ConfigDict, Field


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


class RequestContext(BaseModel):
    """Identity and tracing data of one user request, passed to every handler first.

    It holds no credentials: a token is checked by the API and never put on the bus.
    Unknown fields from a newer sender are ignored, so services can be upgraded one by one.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: str = Field(default_factory=new_request_id, min_length=1, max_length=200)
    project_id: str | None = None
    user_id: str | None = None
    roles: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @classmethod
    def admin(cls, request_id: str | None = None) -> RequestContext:
        """A context for the system's own work (periodic tasks, start-up recovery)."""
        return cls(request_id=request_id or new_request_id(), roles=("admin",))


#: The context of the request a server thread is handling now (None outside a handler), so
#: log formatters and code far from the handler can name the request without passing it on.
current_context: ContextVar[RequestContext | None] = ContextVar("current_context", default=None)
