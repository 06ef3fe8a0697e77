"""Images: disk images deployed onto nodes, either at a URL or uploaded to the API.

A project sees its own images and the public ones (which only admins make). Uploads are
streamed to ``settings.image_dir/<id>`` while their size and sha256 are computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import FileResponse
from sqlalchemy import or_
from sqlmodel import Session, col, select, update
from starlette.concurrency import run_in_threadpool

from libs.db import Database, Image, ImageStatus, Instance
from libs.errors import Forbidden, InvalidStateTransition, NotFound
from libs.rpc import RequestContext

from ..deps import ContextDep, DatabaseDep, SessionDep, SettingsDep
from ..errors import InvalidInput
from ..queries import PageDep, paginate, release_from_instances
from ..schemas import ImageCreate, ImageList, ImagePublic

router = APIRouter(prefix="/v1/images", tags=["images"])


def is_visible(image: Image, ctxt: RequestContext) -> bool:
    return ctxt.is_admin or image.project_id is None or image.project_id == ctxt.project_id


def is_owner(image: Image, ctxt: RequestContext) -> bool:
    return ctxt.is_admin or (image.project_id is not None and image.project_id == ctxt.project_id)


def get_image(session: Session, image_id: str, ctxt: RequestContext) -> Image:
    """An image the caller may see (another project's private image is not found)."""
    image = session.get(Image, image_id)
    if image is None or not is_visible(image, ctxt):
        raise NotFound(f"image {image_id!r} not found")
    return image


def get_own_image(session: Session, image_id: str, ctxt: RequestContext) -> Image:
    image = get_image(session, image_id, ctxt)
    if not is_owner(image, ctxt):
        raise Forbidden("only an admin may change a public image")
    return image


def find_image(session: Session, ref: str, ctxt: RequestContext) -> Image:
    """The visible image whose id, or else whose (unambiguous) name, is ``ref``.

    Raises :class:`InvalidInput`: callers use it for references inside a request body.
    """
    image = session.get(Image, ref)
    if image is not None and is_visible(image, ctxt):
        return image
    statement = select(Image).where(col(Image.name) == ref)
    if not ctxt.is_admin:
        statement = statement.where(
            or_(col(Image.project_id).is_(None), col(Image.project_id) == ctxt.project_id)
        )
    matches = session.exec(statement.limit(2)).all()
    if not matches:
        raise InvalidInput(f"image {ref!r} not found")
    if len(matches) > 1:
        raise InvalidInput(f"more than one image is named {ref!r}; use its id")
    return matches[0]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_image(body: ImageCreate, session: SessionDep, ctxt: ContextDep) -> ImagePublic:
    if body.visibility == "public" and not ctxt.is_admin:
        raise Forbidden("only an admin may create a public image")
    complete = body.source_url is not None and body.sha256 is not None and body.size is not None
    image = Image(
        name=body.name,
        project_id=None if body.visibility == "public" else ctxt.project_id,
        status=ImageStatus.ACTIVE if complete else ImageStatus.QUEUED,
        disk_format=body.disk_format,
        source_url=body.source_url,
        sha256=body.sha256,
        size=body.size,
    )
    session.add(image)
    session.commit()
    return ImagePublic.from_row(image)


@router.get("")
def list_images(
    session: SessionDep,
    ctxt: ContextDep,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=255)] = None,
) -> ImageList:
    statement = select(Image)
    if not ctxt.is_admin:
        statement = statement.where(
            or_(col(Image.project_id).is_(None), col(Image.project_id) == ctxt.project_id)
        )
    if name is not None:
        statement = statement.where(col(Image.name) == name)
    rows, next_marker = paginate(session, statement, col(Image.id), page)
    return ImageList(images=[ImagePublic.from_row(r) for r in rows], next_marker=next_marker)


@router.get("/{image_id}")
def show_image(image_id: str, session: SessionDep, ctxt: ContextDep) -> ImagePublic:
    return ImagePublic.from_row(get_image(session, image_id, ctxt))


def _check_upload(db: Database, image_id: str, ctxt: RequestContext) -> None:
    with db.session() as session:
        image = get_own_image(session, image_id, ctxt)
        if image.status != ImageStatus.QUEUED:
            raise InvalidStateTransition(f"image {image_id!r} already has its data")


def _finish_upload(
    db: Database, image_id: str, part: Path, final: Path, sha256: str, size: int
) -> ImagePublic:
    with db.session() as session:
        # Conditional, so of two concurrent uploads only one wins; the file is moved into
        # place while this transaction holds the row, so the data matches what is stored.
        result = session.exec(
            update(Image)
            .where(col(Image.id) == image_id, col(Image.status) == ImageStatus.QUEUED)
            .values(status=ImageStatus.ACTIVE, sha256=sha256, size=size, file_path=str(final))
        )
        if result.rowcount != 1:
            raise InvalidStateTransition(f"image {image_id!r} already has its data")
        part.replace(final)
        session.commit()
        image = session.get(Image, image_id)
        assert image is not None
        session.refresh(image)
        return ImagePublic.from_row(image)


@router.put("/{image_id}/file")
async def upload_image_file(
    image_id: str,
    request: Request,
    ctxt: ContextDep,
    session: SessionDep,
    db: DatabaseDep,
    settings: SettingsDep,
) -> ImagePublic:
    """Upload the image's data as the raw request body (streamed; any size)."""
    # The token was looked up in this session: end it, so that no connection (and no open
    # transaction) is held for the minutes a large image takes to arrive.
    await run_in_threadpool(session.close)
    await run_in_threadpool(_check_upload, db, image_id, ctxt)
    directory = settings.image_dir
    await run_in_threadpool(directory.mkdir, parents=True, exist_ok=True)
    part = directory / f"{image_id}.part-{uuid.uuid4().hex}"
    digest = hashlib.sha256()
    size = 0
    try:
        with part.open("wb") as out:
            async for chunk in request.stream():
                if chunk:
                    digest.update(chunk)
                    size += len(chunk)
                    await run_in_threadpool(out.write, chunk)
        return await run_in_threadpool(
            _finish_upload, db, image_id, part, directory / image_id, digest.hexdigest(), size
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


@router.get(
    "/{image_id}/file",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_image_file(image_id: str, session: SessionDep, ctxt: ContextDep) -> FileResponse:
    """The uploaded data, streamed."""
    image = get_image(session, image_id, ctxt)
    if image.file_path is None or not Path(image.file_path).is_file():
        raise NotFound(f"image {image_id!r} has no uploaded data")
    return FileResponse(image.file_path, media_type="application/octet-stream")


@router.delete("/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(image_id: str, session: SessionDep, ctxt: ContextDep) -> None:
    image = get_own_image(session, image_id, ctxt)
    release_from_instances(session, Instance.image_id, image.id, f"image {image.name!r}")
    file_path = image.file_path
    session.delete(image)
    session.commit()
    if file_path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file_path)
