"""An API worker that answers more than its share of the requests asks a client to close
its connection (services/api/balance.py), with an answer's ``Connection: close``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.api.balance import SHED_INTERVAL, SLACK, WorkerShares
from services.api.middleware import RequestIDMiddleware


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def worker(counts: list[int], index: int, answering: int, clock: Clock) -> WorkerShares:
    """Worker ``index`` of ``counts``, answering ``answering`` requests."""
    shares = WorkerShares(counts, index, clock=clock)
    for _ in range(answering):
        shares.started()
    return shares


def test_a_worker_counts_the_requests_it_answers_in_its_slot():
    counts = [5, 7]
    shares = WorkerShares(counts, 1, clock=Clock())
    assert counts == [5, 0]  # a worker (started again) starts with none
    shares.started()
    shares.started()
    shares.finished()
    assert counts == [5, 1]


def test_a_worker_within_its_share_keeps_its_clients():
    # 50 requests in all, 25 each: two more than that is within the slack.
    assert SLACK == 2
    assert worker([0, 23], 0, answering=27, clock=Clock()).close_this_one() is False
    # The worker with fewer never closes.
    assert worker([0, 29], 0, answering=21, clock=Clock()).close_this_one() is False


def test_a_worker_over_its_share_closes_one_connection_per_interval():
    counts = [0, 21]
    clock = Clock()
    shares = worker(counts, 0, answering=29, clock=clock)
    assert shares.close_this_one() is True
    # The client asked to close has not come back elsewhere yet: the answers right
    # after that one keep their connections.
    clock.now += SHED_INTERVAL / 2
    assert shares.close_this_one() is False
    clock.now += SHED_INTERVAL
    assert shares.close_this_one() is True
    # Once clients went elsewhere the shares are even: no more closing.
    for _ in range(3):
        shares.finished()
    counts[1] = 24
    clock.now += SHED_INTERVAL * 2
    assert shares.close_this_one() is False


def test_the_share_is_rounded_up():
    clock = Clock()
    # Five requests on two workers: three is one's share (rounded up), five its share
    # with the slack.
    assert worker([0, 0], 0, answering=5, clock=clock).close_this_one() is False
    assert worker([0, 0], 0, answering=6, clock=clock).close_this_one() is True


def app_with(shares: object | None) -> Starlette:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)], middleware=[Middleware(RequestIDMiddleware)])
    if shares is not None:
        app.state.worker_shares = shares
    return app


class Verdict:
    """Shares that close or keep every connection, and count the requests."""

    def __init__(self, close: bool) -> None:
        self.close = close
        self.asked = 0
        self.answering = 0
        self.most = 0

    def started(self) -> None:
        self.answering += 1
        self.most = max(self.most, self.answering)

    def finished(self) -> None:
        self.answering -= 1

    def close_this_one(self) -> bool:
        self.asked += 1
        return self.close


def test_the_answer_asks_the_client_to_close_when_the_worker_holds_too_many():
    verdict = Verdict(close=True)
    with TestClient(app_with(verdict)) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    assert response.headers["x-request-id"]
    assert (verdict.asked, verdict.most, verdict.answering) == (1, 1, 0)


def test_the_answer_keeps_the_connection_otherwise_and_without_shares():
    verdict = Verdict(close=False)
    with TestClient(app_with(verdict)) as client:
        assert "connection" not in client.get("/").headers
    assert (verdict.asked, verdict.most, verdict.answering) == (1, 1, 0)
    with TestClient(app_with(None)) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert "connection" not in response.headers


def test_a_request_that_fails_is_counted_out_too():
    async def broken(request: object) -> PlainTextResponse:
        raise RuntimeError("a bug")

    verdict = Verdict(close=False)
    app = Starlette(routes=[Route("/", broken)], middleware=[Middleware(RequestIDMiddleware)])
    app.state.worker_shares = verdict
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/").status_code == 500
    assert (verdict.most, verdict.answering) == (1, 0)
