"""tetsu's own errors, shared by the services and understood by the API.

Each class carries the HTTP status and a short machine-readable ``code`` the API answers
with, so a conductor can raise ``NodeLocked`` and the user sees a 409 with that code and
the reason, never a 500. They take one argument, the human reason, so they cross the
message bus as themselves (see ``libs.rpc`` errors: rebuilt with ``cls(*args)``).

    TetsuError
    ├── BadRequest (400)          ├── NotFound (404)
    ├── Unauthorized (401)        ├── Conflict (409)
    ├── Forbidden (403)           │   ├── NodeLocked
    └── ServiceUnavailable (503)  │   └── InvalidStateTransition
        └── NoLiveConductor       └── NoValidHost (scheduler: nothing fits)
"""

from __future__ import annotations


class TetsuError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(TetsuError):
    status = 400
    code = "bad_request"


class Unauthorized(TetsuError):
    status = 401
    code = "unauthorized"


class Forbidden(TetsuError):
    status = 403
    code = "forbidden"


class NotFound(TetsuError):
    status = 404
    code = "not_found"


class Conflict(TetsuError):
    status = 409
    code = "conflict"


class NodeLocked(Conflict):
    code = "node_locked"


class InvalidStateTransition(Conflict):
    code = "invalid_state"


class NoValidHost(Conflict):
    code = "no_valid_host"


class ServiceUnavailable(TetsuError):
    status = 503
    code = "service_unavailable"


class NoLiveConductor(ServiceUnavailable):
    code = "no_live_conductor"


#: Errors a service may raise to its RPC caller as themselves (``allowed_errors``).
RPC_ERRORS: tuple[type[TetsuError], ...] = (
    BadRequest,
    NotFound,
    Conflict,
    NodeLocked,
    InvalidStateTransition,
    NoValidHost,
    ServiceUnavailable,
    NoLiveConductor,
)
