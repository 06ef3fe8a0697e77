"""Projects and users (admin only), and the list conventions: pagination and bad limits."""

from __future__ import annotations

import pytest

from .support import ADMIN, error_of


def test_project_create_list_show_delete(client):
    created = client.post(
        "/v1/projects", json={"name": "physics", "description": "HPC"}, headers=ADMIN
    )
    assert created.status_code == 201
    project = created.json()
    assert project["name"] == "physics"
    assert project["description"] == "HPC"
    assert project["created_at"].endswith(("Z", "+00:00"))

    listed = client.get("/v1/projects", headers=ADMIN).json()
    assert project["id"] in [p["id"] for p in listed["projects"]]
    assert listed["next_marker"] is None
    assert client.get(f"/v1/projects/{project['id']}", headers=ADMIN).json() == project

    assert client.delete(f"/v1/projects/{project['id']}", headers=ADMIN).status_code == 204
    missing = client.get(f"/v1/projects/{project['id']}", headers=ADMIN)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"


def test_duplicate_project_name_is_409(client):
    assert client.post("/v1/projects", json={"name": "dup"}, headers=ADMIN).status_code == 201
    again = client.post("/v1/projects", json={"name": "dup"}, headers=ADMIN)
    assert again.status_code == 409
    assert error_of(again)["code"] == "duplicate"


def test_project_with_users_cannot_be_deleted(client, alice):
    response = client.delete(f"/v1/projects/{alice.project_id}", headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == "in_use"
    assert "users" in error_of(response)["reason"]


def test_user_create_never_shows_the_password(client):
    project = client.post("/v1/projects", json={"name": "p"}, headers=ADMIN).json()
    response = client.post(
        "/v1/users",
        json={"name": "erin", "password": "hunter22", "project_id": project["id"]},
        headers=ADMIN,
    )
    assert response.status_code == 201
    assert set(response.json()) == {"id", "name", "project_id", "role", "created_at"}
    assert "hunter22" not in response.text
    shown = client.get(f"/v1/users/{response.json()['id']}", headers=ADMIN)
    assert "password" not in shown.text


def test_user_list_filters_by_project(client, alice, bob):
    listed = client.get(f"/v1/users?project_id={alice.project_id}", headers=ADMIN).json()
    assert [u["name"] for u in listed["users"]] == ["alice"]


def test_user_in_unknown_project_is_400(client):
    response = client.post(
        "/v1/users", json={"name": "x", "password": "pw", "project_id": "nope"}, headers=ADMIN
    )
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"
    assert "project 'nope' not found" in error_of(response)["reason"]


def test_duplicate_user_name_is_409(client, alice):
    response = client.post(
        "/v1/users",
        json={"name": "alice", "password": "pw", "project_id": alice.project_id},
        headers=ADMIN,
    )
    assert response.status_code == 409
    assert error_of(response)["code"] == "duplicate"


def test_unknown_role_is_400_naming_the_field(client, alice):
    response = client.post(
        "/v1/users",
        json={"name": "y", "password": "pw", "project_id": alice.project_id, "role": "root"},
        headers=ADMIN,
    )
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith("role:")


def test_pages_follow_next_marker_in_id_order(client):
    for i in range(5):
        client.post("/v1/projects", json={"name": f"p{i}"}, headers=ADMIN)
    # The admin project exists too (created by the admin token): 6 in all.
    seen, marker, pages = [], None, 0
    while True:
        query = "?limit=2" + (f"&marker={marker}" if marker else "")
        page = client.get(f"/v1/projects{query}", headers=ADMIN).json()
        pages += 1
        assert len(page["projects"]) <= 2
        seen += [p["id"] for p in page["projects"]]
        marker = page["next_marker"]
        if marker is None:
            break
        assert marker == page["projects"][-1]["id"]
    assert pages == 3
    assert seen == sorted(seen)
    assert len(set(seen)) == 6


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-1"])
def test_bad_limit_is_400_naming_limit(client, limit):
    response = client.get(f"/v1/projects?limit={limit}", headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"
    assert error_of(response)["reason"].startswith("limit:")
