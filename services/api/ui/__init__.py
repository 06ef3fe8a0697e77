"""The web dashboard the API serves under ``/ui``: server-rendered pages (Jinja2) and one
small script that applies the event stream to them; see docs/dashboard.md.

Its pages call the REST API's own route functions with the caller's context, so a page
shows and changes exactly what the same token could over REST.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .forms import router as forms_router
from .pages import router as pages_router
from .session import AdminOnly, ForgedForm, SignInRequired
from .views import STATIC_DIR, Failure, failure_response, render, wants_fragment

__all__ = ["install_dashboard"]


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard's pages, forms and static files from ``app``."""
    app.include_router(pages_router)
    app.include_router(forms_router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(AdminOnly, _admin_only)
    app.add_exception_handler(ForgedForm, _forged_form)


async def _sign_in(request: Request, exc: Exception) -> Response:
    if wants_fragment(request):
        return failure_response(request, Failure(401, "unauthorized", "sign in again"))
    return RedirectResponse("/ui/login", status_code=303)


async def _admin_only(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdminOnly)
    failure = Failure(403, "forbidden", exc.reason)
    if wants_fragment(request):
        return failure_response(request, failure)
    return render(request, "refused.html", None, status=403, error=failure)


async def _forged_form(request: Request, exc: Exception) -> Response:
    failure = Failure(
        403, "forbidden", "the form was not sent from this dashboard session; reload the page"
    )
    if wants_fragment(request):
        return failure_response(request, failure)
    return render(request, "refused.html", None, status=403, error=failure)
