"""`tetsu image`: uploading a file, registering a URL, and what is refused up front."""

from __future__ import annotations

import hashlib
import json

import httpx

from .screen import flat


def test_create_with_a_file_uploads_its_bytes(tetsu, api, tmp_path):
    data = bytes(range(256)) * 5000  # more than one chunk of the upload
    path = tmp_path / "debian.raw"
    path.write_bytes(data)

    result = tetsu("image", "create", "debian", "--file", str(path), "--format", "json")

    assert result.exit_code == 0, result.output
    image = json.loads(result.stdout)
    assert image["status"] == "active"
    assert image["sha256"] == hashlib.sha256(data).hexdigest()
    assert api.uploads[image["id"]] == data
    upload = api.calls("PUT", f"/v1/images/{image['id']}/file")[0]
    assert upload.headers["Content-Length"] == str(len(data))
    assert json.loads(api.calls("POST", "/v1/images")[0].content) == {
        "name": "debian",
        "disk_format": "raw",
        "visibility": "private",
    }


def test_create_with_a_url_sends_its_checksum_and_size(tetsu, api):
    digest = "AB" * 32

    result = tetsu(
        "image", "create", "ubuntu", "--url", "http://mirror/ubuntu.qcow2",
        "--sha256", digest, "--size", "1234", "--disk-format", "qcow2", "--public",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert json.loads(api.calls("POST", "/v1/images")[0].content) == {
        "name": "ubuntu",
        "disk_format": "qcow2",
        "visibility": "public",
        "source_url": "http://mirror/ubuntu.qcow2",
        "sha256": "ab" * 32,
        "size": 1234,
    }


def test_a_url_without_its_checksum_is_refused_before_asking_the_api(tetsu, api):
    result = tetsu("image", "create", "ubuntu", "--url", "http://mirror/ubuntu.qcow2")

    assert result.exit_code == 2
    assert "give --sha256 and --size" in flat(result.output)
    assert api.requests == []


def test_a_failed_upload_removes_the_empty_image(tetsu, api, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"x" * 10)
    handle = api.handler

    def refuse_uploads(request):
        if request.method == "PUT":
            return _error(413, "too_large", "the image store is full")
        return handle(request)

    api.handler = refuse_uploads
    result = tetsu("image", "create", "debian", "--file", str(path))

    assert result.exit_code == 1
    assert "error: the image store is full (too_large" in result.stderr
    assert "removed the image debian again" in result.stderr
    assert api.items["images"] == {}


def _error(status: int, code: str, reason: str) -> httpx.Response:
    body = {"error": {"code": code, "reason": reason, "request_id": "req-1"}}
    return httpx.Response(status, json=body)
