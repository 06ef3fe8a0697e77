"""Who may call what: bearer tokens, the bootstrap admin, logins and roles."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import delete, select

from libs.db import Role, Token, utcnow
from services.api.app import create_app
from services.api.auth import TokenCache, TokenOwner, hash_password, verify_password

from .support import ADMIN, error_of, make_member


def test_no_token_is_401(client):
    response = client.get("/v1/flavors")
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


def test_wrong_token_is_401(client):
    response = client.get("/v1/flavors", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


def test_other_scheme_is_401(client):
    response = client.get("/v1/flavors", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert response.status_code == 401


def test_the_scheme_is_read_in_any_case_and_an_empty_token_is_none(client, alice):
    token = alice.headers["Authorization"].removeprefix("Bearer ")
    listed = client.get("/v1/flavors", headers={"Authorization": f"bearer {token}"})
    assert listed.status_code == 200
    empty = client.get("/v1/flavors", headers={"Authorization": "Bearer "})
    assert empty.status_code == 401
    assert "missing bearer token" in error_of(empty)["reason"]


def test_login_gives_a_token_that_works(client):
    project = client.post("/v1/projects", json={"name": "research"}, headers=ADMIN).json()
    user = client.post(
        "/v1/users",
        json={"name": "carol", "password": "s3cret pass", "project_id": project["id"]},
        headers=ADMIN,
    ).json()

    response = client.post("/v1/tokens", json={"name": "carol", "password": "s3cret pass"})

    assert response.status_code == 201
    body = response.json()
    assert body["user_id"] == user["id"]
    assert body["project_id"] == project["id"]
    assert body["role"] == "member"
    assert body["expires_at"]
    listed = client.get("/v1/flavors", headers={"Authorization": f"Bearer {body['token']}"})
    assert listed.status_code == 200


def test_wrong_password_and_unknown_user_get_the_same_401(client, alice):
    wrong = client.post("/v1/tokens", json={"name": "alice", "password": "nope"})
    unknown = client.post("/v1/tokens", json={"name": "nobody", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert error_of(wrong)["reason"] == error_of(unknown)["reason"]


def test_only_the_token_hash_is_stored(client, db):
    member = make_member(db, "dave")
    token = member.headers["Authorization"].removeprefix("Bearer ")
    with db.session() as session:
        ids = session.exec(select(Token.id)).all()
    assert ids
    assert token not in ids
    assert all(len(i) == 64 for i in ids)


def test_expired_token_is_401(client, db, alice):
    with db.session() as session:
        for token in session.exec(select(Token)).all():
            token.expires_at = utcnow() - timedelta(seconds=1)
            session.add(token)
    response = client.get("/v1/flavors", headers=alice.headers)
    assert response.status_code == 401


def test_deleting_a_user_revokes_their_tokens(client, alice):
    assert client.get("/v1/flavors", headers=alice.headers).status_code == 200  # now cached
    assert client.delete(f"/v1/users/{alice.user_id}", headers=ADMIN).status_code == 204
    assert client.get("/v1/flavors", headers=alice.headers).status_code == 401


def test_a_token_seen_lately_is_not_looked_up_again(client, db, alice):
    assert client.get("/v1/flavors", headers=alice.headers).status_code == 200
    with db.session() as session:  # as another API process would delete it
        session.exec(delete(Token))
    assert client.get("/v1/flavors", headers=alice.headers).status_code == 200


def test_without_the_cache_every_token_is_looked_up(settings, db, memory_transport, backend):
    settings.token_cache_seconds = 0
    with TestClient(create_app(settings, db, memory_transport)) as client:
        member = make_member(db, "erin")
        assert client.get("/v1/flavors", headers=member.headers).status_code == 200
        with db.session() as session:
            session.exec(delete(Token))
        assert client.get("/v1/flavors", headers=member.headers).status_code == 401


def _owner(expires_in: float) -> TokenOwner:
    return TokenOwner(
        user_id="u1",
        project_id="p1",
        role=Role.MEMBER.value,
        expires_at=utcnow() + timedelta(seconds=expires_in),
    )


def test_the_cache_forgets_a_token_after_its_seconds(monkeypatch: pytest.MonkeyPatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cache = TokenCache(10)
    cache.put("digest", _owner(3600))
    now[0] += 9.9
    assert cache.get("digest") is not None
    now[0] += 0.1
    assert cache.get("digest") is None


def test_the_cache_answers_no_token_past_its_expiry():
    cache = TokenCache(10)
    cache.put("digest", _owner(-1))
    assert cache.get("digest") is None


def test_the_cache_forgets_a_deleted_users_tokens():
    cache = TokenCache(10)
    cache.put("a", _owner(3600))
    cache.put("b", TokenOwner("u2", "p1", Role.MEMBER.value, utcnow() + timedelta(hours=1)))
    cache.forget_user("u1")
    assert cache.get("a") is None
    assert cache.get("b") is not None


def test_member_is_forbidden_admin_routes(client, alice):
    for method, path in [
        ("GET", "/v1/nodes"),
        ("POST", "/v1/nodes"),
        ("GET", "/v1/ports"),
        ("GET", "/v1/projects"),
        ("GET", "/v1/users"),
        ("GET", "/v1/conductors"),
        ("GET", "/v1/hypervisors"),
        ("GET", "/v1/hypervisors/hv-1"),
        ("DELETE", "/v1/hypervisors/hv-1"),
        ("POST", "/v1/flavors"),
    ]:
        response = client.request(method, path, headers=alice.headers, json={})
        assert response.status_code == 403, (method, path, response.text)
        assert error_of(response)["code"] == "forbidden"


def test_admin_may_use_admin_routes(client):
    assert client.get("/v1/nodes", headers=ADMIN).status_code == 200


def test_user_with_admin_role_is_an_admin(client, db):
    root = make_member(db, "root", role=Role.ADMIN)
    assert client.get("/v1/nodes", headers=root.headers).status_code == 200


def test_admin_token_acts_in_the_admin_project(client):
    projects = client.get("/v1/projects", headers=ADMIN).json()["projects"]
    assert [p["name"] for p in projects] == ["admin"]
    network = client.post("/v1/networks", json={"name": "ops"}, headers=ADMIN).json()
    assert network["project_id"] == projects[0]["id"]


def test_password_hashes_are_salted_and_verify():
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second
    assert first.startswith("scrypt$")
    assert verify_password("pw", first)
    assert not verify_password("PW", first)
    assert not verify_password("pw", "md5$abc$def")
