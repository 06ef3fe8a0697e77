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
from typing import Annotated, NamedTuple

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import FileResponse
from sqlalchemy import bindparam, or_
from sqlalchemy import select as sa_select
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


class ImageChoice(NamedTuple):
    """What a request that names an image needs of it."""

    id: str
    status: ImageStatus


_IMAGE = Image.metadata.tables["image"]
_IMAGES_BY_REF = sa_select(_IMAGE.c.id, _IMAGE.c.status).where(
    or_(_IMAGE.c.id == bindparam("image_ref"), _IMAGE.c.name == bindparam("image_ref"))
)
#: The images whose id or name is ``image_ref`` (three at most: one by id, and two by name are
#: enough to call the name ambiguous), built once: for admins, and for members (theirs
#: and the public ones, parameter ``project_id``).
ANY_IMAGES_BY_REF = _IMAGES_BY_REF.limit(3)
VISIBLE_IMAGES_BY_REF = _IMAGES_BY_REF.where(
    or_(_IMAGE.c.project_id.is_(None), _IMAGE.c.project_id == bindparam("project_id"))
).limit(3)


def find_image(session: Session, ref: str, ctxt: RequestContext) -> ImageChoice:
    """The visible image whose id, or else whose (unambiguous) name, is ``ref``, in one
    query.

    Raises :class:`InvalidInput`: callers use it for references inside a request body.
    """
    statement = ANY_IMAGES_BY_REF if ctxt.is_admin else VISIBLE_IMAGES_BY_REF
    rows = session.connection().execute(
        statement, {"image_ref": ref, "project_id": ctxt.project_id}
    )
    return choose_image([ImageChoice(row.id, ImageStatus(row.status)) for row in rows], ref)


def choose_image(matches: list[ImageChoice], ref: str) -> ImageChoice:
    """Of the images that :data:`ANY_IMAGES_BY_REF` or :data:`VISIBLE_IMAGES_BY_REF`
    found for ``ref``, the one it names; InvalidInput if none or more than one."""
    by_id = next((m for m in matches if m.id == ref), None)
    if by_id is not None:
        return by_id
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
