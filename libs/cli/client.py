"""A Python client of tetsu's REST API v1: one object per resource, errors as APIError.

with APIClient("http://127.0.0.1:8000", token) as api:
    for node in api.nodes.list(provision_state="available"):
        ...
    api.nodes.set_provision_state(node["id"], "manage")
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from libs.errors import NodeLocked

Resource = dict[str, Any]

#: A request the API refused because its node was busy (409 ``node_locked``: a conductor
#: holds the node's lock for a moment, e.g. right after ``manage``) is sent again this many
#: times, this many seconds apart: python-ironicclient's defaults for Ironic's 409s.
LOCKED_RETRIES = 5
LOCKED_RETRY_INTERVAL = 2.0

USER_AGENT = "tetsu-cli/0.1"
PAGE_SIZE = 1000  # the API's largest page: fewer round trips for long lists
UPLOAD_CHUNK = 1024 * 1024
_MAC_DIGITS = re.compile(r"^[0-9a-f]{12}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


class APIError(Exception):
    """The API refused a request, or could not be reached.

    ``status`` is the HTTP status, or None when no answer decided it (unreachable, timed
    out, a name that matches several resources). ``code`` is the API's machine-readable
    code (``not_found``, ``node_locked``...) or one of the client's own: ``unreachable``,
    ``timeout``, ``transport_error``, ``invalid_response``, ``ambiguous``.
    """

    def __init__(self, status: int | None, code: str, reason: str, request_id: str | None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.request_id = request_id

    @property
    def retriable(self) -> bool:
        """Worth asking again later: the API was unreachable, slow or overloaded."""
        if self.status is None:
            return self.code in {"unreachable", "timeout"}
        return self.status in {502, 503, 504}

    def __str__(self) -> str:
        details = ", ".join(part for part in (self.code, self.request_id) if part)
        return f"{self.reason} ({details})"


class APIClient:
    """tetsu's REST API over HTTP: ``api.nodes``, ``api.instances``... plus ``login``.

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``). A request
    refused with ``node_locked`` is sent again up to ``locked_retries`` times, after
    ``retry_interval`` seconds each (``sleep``), calling ``on_retry(error, seconds)`` first.
    """

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        locked_retries: int = LOCKED_RETRIES,
        retry_interval: float = LOCKED_RETRY_INTERVAL,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[APIError, float], None] | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.locked_retries = locked_retries
        self.retry_interval = retry_interval
        self.on_retry = on_retry
        self._sleep = sleep
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.endpoint, headers=headers, timeout=timeout, transport=transport
        )
        self.projects = Collection(self, "projects", "project")
        self.users = Collection(self, "users", "user")
        self.flavors = Collection(self, "flavors", "flavor")
        self.images = Images(self, "images", "image", name_filter=True)
        self.networks = Collection(self, "networks", "network")
        self.nodes = Nodes(self, "nodes", "node", names_in_path=True)
        self.ports = Ports(self, "ports", "port")
        self.hypervisors = Collection(self, "hypervisors", "hypervisor", names_in_path=True)
        self.instances = Collection(self, "instances", "server")

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; any answer but 2xx becomes :class:`APIError`. A request the
        API refused because its node was locked is sent again (not one whose body is a
        stream: it was read)."""
        retries = self.locked_retries if content is None else 0
        for attempt in range(retries + 1):
            try:
                return self._send(method, path, json, params, content, headers)
            except APIError as exc:
                if exc.code != NodeLocked.code or attempt == retries:
                    raise
                if self.on_retry is not None:
                    self.on_retry(exc, self.retry_interval)
                self._sleep(self.retry_interval)
        raise AssertionError("unreachable")

    def _send(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, Any] | None,
        content: Iterator[bytes] | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        # Our own request id, so even a request that never got an answer can be found in
        # the API's logs (the API keeps a sane id the client sends).
        request_id = f"req-{uuid.uuid4()}"
        all_headers = {"X-Request-ID": request_id, **(headers or {})}
        try:
            response = self._http.request(
                method, path, json=json, params=params, content=content, headers=all_headers
            )
        except httpx.ConnectError as exc:
            raise APIError(
                None,
                "unreachable",
                f"cannot connect to the tetsu API at {self.endpoint}: {_why(exc)}",
                request_id,
            ) from None
        except httpx.TimeoutException:
            raise APIError(
                None,
                "timeout",
                f"the tetsu API at {self.endpoint} did not answer in time",
                request_id,
            ) from None
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            raise APIError(
                None,
                "transport_error",
                f"cannot talk to the tetsu API at {self.endpoint}: {_why(exc)}",
                request_id,
            ) from None
        if response.is_success:
            return response
        raise _error_from(response, request_id)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, then the answer's JSON body."""
        return _body(self.request(method, path, **kwargs))

    def login(self, name: str, password: str) -> Resource:
        """A new bearer token: ``{"token", "expires_at", "user_id", "project_id", "role"}``."""
        answer: Resource = self.json(
            "POST", "/v1/tokens", json={"name": name, "password": password}
        )
        return answer

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Collection:
    """One REST collection, ``/v1/<plural>``: list (every page), get, find, create..."""

    def __init__(
        self,
        client: APIClient,
        plural: str,
        singular: str,
        *,
        names_in_path: bool = False,
        name_filter: bool = False,
    ) -> None:
        self.client = client
        self.plural = plural
        self.singular = singular  # for messages: "no server named web1"
        self.path = f"/v1/{plural}"
        self._names_in_path = names_in_path  # GET /v1/<plural>/<name> works
        self._name_filter = name_filter  # GET /v1/<plural>?name= works

    def iter(self, **filters: Any) -> Iterator[Resource]:
        """Every item that matches ``filters`` (None ones are left out), page after page."""
        params = _query(filters)
        params["limit"] = PAGE_SIZE
        marker: str | None = None
        while True:
            if marker is not None:
                params["marker"] = marker
            page = self.client.json("GET", self.path, params=params)
            items = page.get(self.plural) if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise APIError(
                    200,
                    "invalid_response",
                    f"GET {self.path} answered no list of {self.plural}: is "
                    f"{self.client.endpoint} the tetsu API?",
                    None,
                )
            yield from items
            next_marker = page.get("next_marker")
            if not next_marker or next_marker == marker:  # the latter: never loop forever
                return
            marker = next_marker

    def list(self, **filters: Any) -> list[Resource]:
        return list(self.iter(**filters))

    def get(self, ident: str) -> Resource:
        answer: Resource = self.client.json("GET", self._item(ident))
        return answer

    def find(self, ident: str) -> Resource:
        """The item whose id, or else unique name, is ``ident``."""
        if self._names_in_path or _UUID.match(ident):
            return self.get(ident)
        filters = {"name": ident} if self._name_filter else {}
        matches = [item for item in self.iter(**filters) if item.get("name") == ident]
        if not matches:
            raise APIError(404, "not_found", f"no {self.singular} named {ident!r}", None)
        if len(matches) > 1:
            ids = ", ".join(item["id"] for item in matches)
            raise APIError(
                None,
                "ambiguous",
                f"{len(matches)} {self.singular}s are named {ident!r} ({ids}): use an id",
                None,
            )
        return matches[0]

    def create(self, body: Resource) -> Resource:
        response = self.client.request("POST", self.path, json=body)
        created = _body(response) if response.content else {}
        if isinstance(created, dict) and "id" in created:
            return created
        # An accepted (202) request may answer with just where the new item lives.
        if location := response.headers.get("Location"):
            answer: Resource = self.client.json("GET", location)
            return answer
        raise APIError(
            response.status_code,
            "invalid_response",
            f"creating a {self.singular} answered neither the {self.singular} nor its location",
            response.headers.get("X-Request-ID"),
        )

    def update(self, ident: str, changes: Resource) -> Resource:
        answer: Resource = self.client.json("PATCH", self._item(ident), json=changes)
        return answer

    def delete(self, ident: str) -> Resource | None:
        """Delete; what the API answered about the item (a 202's body), if anything."""
        response = self.client.request("DELETE", self._item(ident))
        answer = _body(response) if response.content else None
        return answer if isinstance(answer, dict) else None

    def action(self, ident: str, action: str, body: Resource) -> Resource:
        """``POST /v1/<plural>/<id>/<action>`` (e.g. an instance's rebuild)."""
        answer: Resource = self.client.json("POST", f"{self._item(ident)}/{action}", json=body)
        return answer

    def _item(self, ident: str) -> str:
        # A name may hold characters that mean something in a URL path.
        return f"{self.path}/{quote(ident, safe='')}"


class Nodes(Collection):
    """``/v1/nodes``: a node may be named by its name as well as its id."""

    def set_provision_state(self, ident: str, target: str) -> None:
        """Ask for ``manage``, ``provide`` or ``delete``; the conductor works on it after."""
        self.client.request("PUT", f"{self._item(ident)}/states/provision", json={"target": target})

    def set_power_state(self, ident: str, target: str) -> None:
        """Ask for ``power on``, ``power off`` or ``reboot``."""
        self.client.request("PUT", f"{self._item(ident)}/states/power", json={"target": target})

    def validate(self, ident: str) -> Resource:
        answer: Resource = self.client.json("GET", f"{self._item(ident)}/validate")
        return answer


class Ports(Collection):
    """``/v1/ports``: a port may be named by its MAC address as well as its id."""

    def find(self, ident: str) -> Resource:
        if _UUID.match(ident):
            return self.get(ident)
        matches = self.list(address=normalise_mac(ident) or ident)
        if not matches:
            raise APIError(404, "not_found", f"no port with address {ident!r}", None)
        return matches[0]  # addresses are unique


class Images(Collection):
    """``/v1/images``, whose data is uploaded apart from the record."""

    def upload(self, ident: str, path: Path, *, progress: Console | None = None) -> Resource:
        """Stream the file at ``path`` as the image's data; a progress bar on ``progress``."""
        size = path.stat().st_size
        with Progress(
            TextColumn("uploading {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=progress,
            disable=progress is None,
            transient=True,
        ) as bar:
            task = bar.add_task(path.name, total=size)
            chunks = _read_chunks(path, lambda sent: bar.advance(task, sent))
            answer: Resource = self.client.json(
                "PUT",
                f"{self._item(ident)}/file",
                content=chunks,
                # A known length lets the API refuse a too large image before reading it.
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        return answer


def normalise_mac(value: str) -> str | None:
    """``value`` as the API stores MAC addresses (``52:54:00:12:34:56``), whether written
    with colons, dashes, dots or nothing between the digits; None if it is no MAC."""
    digits = re.sub(r"[:.-]", "", value.strip().lower())
    if not _MAC_DIGITS.match(digits):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _read_chunks(path: Path, sent: Callable[[int], None]) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(UPLOAD_CHUNK):
            yield chunk
            sent(len(chunk))


def _query(filters: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in filters.items():
        if value is None:
            continue
        params[key] = ("true" if value else "false") if isinstance(value, bool) else value
    return params


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise APIError(
            response.status_code,
            "invalid_response",
            f"{response.request.method} {response.request.url.path} answered something "
            "that is not JSON",
            response.headers.get("X-Request-ID"),
        ) from None


def _error_from(response: httpx.Response, request_id: str) -> APIError:
    """The APIError for an answer that is not 2xx, from its ``{"error": {...}}`` body."""
    request_id = response.headers.get("X-Request-ID", request_id)
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("reason"), str):
        return APIError(
            response.status_code,
            str(error.get("code") or f"http_{response.status_code}"),
            error["reason"],
            str(error.get("request_id") or request_id),
        )
    # Not the API's own answer (a proxy in between, or a route that does not exist).
    reason = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    return APIError(response.status_code, f"http_{response.status_code}", reason, request_id)
