"""FastAPI dependencies: the database session, the caller's identity and role checks, and
the check of every route's path and query parameters."""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, ParamSpec, TypeVar
from weakref import WeakKeyDictionary

from fastapi import Depends, Request
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from libs.db import Database, Project, Role
from libs.db.engine import DEFAULT_POOL_SIZE, MAX_OVERFLOW
from libs.errors import Forbidden, Unauthorized
from libs.notify import Notifier
from libs.rpc import RequestContext
from services.conductor.rpcapi import ConductorAPI
from services.scheduler.rpcapi import SchedulerAPI

from .auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    TokenCache,
    TokenOwner,
    csrf_token,
    owner_of_token,
    token_digest,
)
from .errors import InvalidInput, request_id_of
from .schemas import unstorable
from .settings import APISettings

#: The project the bootstrap admin token acts in (created the first time it is used).
ADMIN_PROJECT = "admin"

#: How the REST API's schema names the bearer token (see :func:`document_bearer_token`).
BEARER_SCHEME = "HTTPBearer"
#: A route that needs no bearer token says so in the schema with ``openapi_extra=NO_TOKEN``.
NO_TOKEN: dict[str, Any] = {"security": []}


async def get_settings(request: Request) -> APISettings:
    settings: APISettings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_scheduler_api(request: Request) -> SchedulerAPI:
    api: SchedulerAPI = request.app.state.scheduler_api
    return api


async def get_conductor_api(request: Request) -> ConductorAPI:
    api: ConductorAPI = request.app.state.conductor_api
    return api


async def check_parameters(request: Request) -> None:
    """A path or query parameter the database cannot compare (PostgreSQL refuses a NUL
    character even in a WHERE clause) is a 400 naming it; every route depends on this."""
    parameters = [*request.path_params.items(), *request.query_params.multi_items()]
    for name, value in parameters:
        problem = unstorable(value)
        if problem is not None:
            raise InvalidInput(f"{name}: {problem}")


# The dependencies that only read the app's state are coroutines: FastAPI runs a plain
# function on a pool thread, a hop to another thread and back for each (measured, API CPU
# per request: /healthz 2.4 -> 1.6 ms, a creation 11.2 -> 9.3 ms).
SettingsDep = Annotated[APISettings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SchedulerAPIDep = Annotated[SchedulerAPI, Depends(get_scheduler_api)]
ConductorAPIDep = Annotated[ConductorAPI, Depends(get_conductor_api)]


class SessionLanes:
    """How many requests may hold a database session at once, in two lanes: reads (GET,
    HEAD) and writes. A burst of writes fills its own lane and the reads still get theirs,
    so a user who looks at an instance is not queued behind a thousand creations
    (measured before the lanes: a GET during a 200-instance burst waited up to 1.5 s, as
    long as the creations themselves). Waiting requests wait in the event loop, without a
    thread; each event loop has its own semaphores (tests run several loops)."""

    def __init__(self, reads: int, writes: int) -> None:
        self.reads = reads
        self.writes = writes
        self._by_loop: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[bool, asyncio.Semaphore]]
        self._by_loop = WeakKeyDictionary()

    def lane(self, method: str) -> asyncio.Semaphore:
        """The semaphore a request of ``method`` waits on (in the running loop)."""
        loop = asyncio.get_running_loop()
        lanes = self._by_loop.get(loop)
        if lanes is None:
            lanes = self._by_loop[loop] = {
                True: asyncio.Semaphore(self.reads),
                False: asyncio.Semaphore(self.writes),
            }
        return lanes[method in READ_METHODS]


READ_METHODS = frozenset({"GET", "HEAD"})

#: Requests that hold a database session at once; the others wait for their turn in the
#: event loop, without a thread. FastAPI runs a route's dependencies, the route and the
#: check of its answer each on a pool thread (40) of its own, and a session keeps its
#: connection in between: with more requests than connections, requests that hold a
#: connection while they wait for a thread, and threads that wait for a connection, hang
#: each other until the pool's timeout (measured: 200 concurrent GETs, 115 of them 503
#: after 30 to 90 s). Below the API's pool (its size plus overflow, 14), so connections
#: remain for what a route reads outside its session (the conductors' ring, /healthz).
MAX_SESSIONS = DEFAULT_POOL_SIZE + MAX_OVERFLOW // 2

#: Of those, the sessions kept for reads: enough for a few users watching a burst.
READ_SESSIONS = 4

LANES = SessionLanes(reads=READ_SESSIONS, writes=MAX_SESSIONS - READ_SESSIONS)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for one request. Routes commit their writes themselves (so that a unique
    violation is answered as a 409 and a commit happens before any message is sent); the
    exit commits anything left and closes before the response is sent. It carries the
    app's notifier (:func:`notifier_of`), so events go with the writes they describe.
    A read (GET, HEAD) gets a session without a transaction (:meth:`Database.reader`).

    A coroutine, though the route uses the session on a pool thread: opening a session
    touches no connection (its first statement takes one from the pool), and closing a
    read session, or a write session after the route committed, waits on no round trip;
    as a plain function each was a hop to a pool thread and back (measured, the API alone
    with 50 GETs of an instance in flight: 437 -> 520 a second, 2.8 -> 2.4 ms CPU each).
    A route that failed, or left a transaction open, is rolled back or committed on a
    pool thread as before (SQLite may make a writer wait for its lock).

    It first waits for a free session in the request's lane (:data:`LANES`), held until
    the session is closed; one dependency rather than three, as FastAPI's solving of each
    costs every request some CPU."""
    db: Database = request.app.state.db
    reading = request.method in READ_METHODS
    async with LANES.lane(request.method):
        opened = db.reader() if reading else db.session()
        session = opened.__enter__()
        session.info[NOTIFIER_KEY] = getattr(request.app.state, "notifier", None)
        try:
            yield session
        except Exception as exc:
            await run_in_threadpool(opened.__exit__, type(exc), exc, exc.__traceback__)
            raise
        except BaseException as exc:  # cancelled: no waiting for a thread then
            opened.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if reading or not session.in_transaction():
            opened.__exit__(None, None, None)
        else:
            await run_in_threadpool(opened.__exit__, None, None, None)
    db.outage.succeeded()


NOTIFIER_KEY = "tetsu.api.notifier"
_RECORD_ONLY = Notifier(service="api")


def notifier_of(session: Session) -> Notifier:
    """The notifier of the request whose session this is (a session made elsewhere, e.g.
    by a test, gets one that only records)."""
    notifier = session.info.get(NOTIFIER_KEY)
    return notifier if isinstance(notifier, Notifier) else _RECORD_ONLY


SessionDep = Annotated[Session, Depends(get_session, scope="function")]

P = ParamSpec("P")
R = TypeVar("R")


def statements_commit_alone(session: Session) -> bool:
    """On PostgreSQL, make each statement ``session`` runs from now on commit on its own,
    without a transaction's BEGIN and COMMIT round trips, and say so; a route that asks
    then writes what must commit together in one statement. On SQLite, False: the session
    stays a transaction. A transaction the session holds (the caller's token looked up in
    it) is committed first."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    session.commit()
    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    return True


def one_hop(route: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A route that waits on the database, made a coroutine that runs it on a pool thread:
    FastAPI runs a plain function there too, but then also checks its answer on another
    hop to a pool thread and back; this one checks it in the event loop. For the routes
    a burst hits (measured, the API alone with 50 creations in flight: 181 -> 203 a
    second, 6.6 -> 5.8 ms CPU each). FastAPI reads the route's parameters through
    ``__wrapped__``."""

    @functools.wraps(route)
    async def on_pool_thread(*args: P.args, **kwargs: P.kwargs) -> R:
        return await run_in_threadpool(route, *args, **kwargs)

    return on_pool_thread


def admin_project_id(session: Session) -> str:
    """The id of the bootstrap admin's project, created on first use."""
    statement = select(Project.id).where(col(Project.name) == ADMIN_PROJECT)
    found = session.exec(statement).first()
    if found is not None:
        return found
    project = Project(name=ADMIN_PROJECT, description="The bootstrap administrator's project")
    session.add(project)
    try:
        session.commit()
    except IntegrityError:
        # Another request created it at the same moment: use theirs.
        session.rollback()
        return session.exec(statement).one()
    return project.id


async def get_context(request: Request, session: SessionDep) -> RequestContext:
    """Who is calling: the bearer token (without one, the dashboard's session cookie) turned
    into the context every RPC message carries. A coroutine: a token the cache knows
    (:class:`~.auth.TokenCache`) is answered here, without a hop to a pool thread; only
    a lookup in the database goes to one. It reads the Authorization header itself: with
    FastAPI's HTTPBearer as a dependency, every request paid for FastAPI working out OAuth
    scopes it does not use (the schema documents the token, :func:`document_bearer_token`)."""
    settings: APISettings = request.app.state.settings
    token = _presented_token(request)
    if not _is_admin_token(settings, token):
        owner = token_cache_of(request).get(token_digest(token))
        if owner is not None:
            return _user_context(request, owner)
    return await run_in_threadpool(context_for_token, request, session, settings, token)


def _bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme in any case)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _presented_token(request: Request) -> str:
    token = _bearer_token(request)
    if token is not None:
        return token
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    # A browser sends the cookie with any request, a forged one too: a write must also
    # prove it comes from a dashboard page.
    if request.method not in ("GET", "HEAD") and not hmac.compare_digest(
        request.headers.get(CSRF_HEADER, "").encode("utf-8"), csrf_token(cookie).encode("utf-8")
    ):
        raise Forbidden(f"a write signed in by the session cookie needs the {CSRF_HEADER} header")
    return cookie


def _is_admin_token(settings: APISettings, token: str) -> bool:
    admin_token = settings.admin_token
    return admin_token is not None and hmac.compare_digest(
        token.encode("utf-8"), admin_token.get_secret_value().encode("utf-8")
    )


#: Apps made without one (tests building their own) look every token up.
_NO_CACHE = TokenCache(0)


def token_cache_of(request: Request) -> TokenCache:
    cache = getattr(request.app.state, "token_cache", None)
    return cache if isinstance(cache, TokenCache) else _NO_CACHE


def _user_context(request: Request, owner: TokenOwner) -> RequestContext:
    return RequestContext(
        request_id=request_id_of(request),
        project_id=owner.project_id,
        user_id=owner.user_id,
        roles=(Role(owner.role).value,),
    )


def context_for_token(
    request: Request, session: Session, settings: APISettings, token: str
) -> RequestContext:
    """The context of a caller who presents ``token`` (the admin token or a user's)."""
    if _is_admin_token(settings, token):
        return RequestContext(
            request_id=request_id_of(request),
            project_id=admin_project_id(session),
            user_id=None,
            roles=(Role.ADMIN.value,),
        )
    owner = owner_of_token(session, token, token_cache_of(request))
    if owner is None:
        raise Unauthorized("invalid or expired token")
    return _user_context(request, owner)


ContextDep = Annotated[RequestContext, Depends(get_context)]


def document_bearer_token(schema: dict[str, Any]) -> None:
    """Say in the REST API's schema that every operation takes the bearer token, except
    those that declare ``openapi_extra=NO_TOKEN``."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from POST /v1/tokens",
    }
    schema["security"] = [{BEARER_SCHEME: []}]


def ensure_admin(ctxt: RequestContext) -> RequestContext:
    """``ctxt`` if it has the admin role, else Forbidden."""
    if not ctxt.is_admin:
        raise Forbidden("this needs the admin role")
    return ctxt


async def require_admin(ctxt: ContextDep) -> RequestContext:
    return ensure_admin(ctxt)


AdminDep = Annotated[RequestContext, Depends(require_admin)]


def may_see(ctxt: RequestContext, project_id: str) -> bool:
    """Whether the caller may see what ``project_id`` owns: an admin anything, a member
    their own project's."""
    return ctxt.is_admin or project_id == ctxt.project_id


def listed_project(ctxt: RequestContext, project_id: str | None, what: str) -> str | None:
    """The project a list of ``what`` is limited to: a member's own (asking for another's
    is Forbidden); an admin's choice, None for every project."""
    if ctxt.is_admin:
        return project_id
    if project_id is not None and project_id != ctxt.project_id:
        raise Forbidden(f"only an admin may list other projects' {what}")
    return ctxt.project_id
