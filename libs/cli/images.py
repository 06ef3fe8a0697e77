"""``tetsu image``: the disk images servers are deployed from (``/v1/images``)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from .client import APIClient, APIError, Resource
from .output import (
    IMAGE_COLUMNS,
    OutputFormat,
    print_list,
    print_resource,
    print_step,
    stderr_console,
)
from .resource_commands import ResourceCommands
from .session import EndpointOption, FormatOption, TokenOption, connect

app = typer.Typer(
    help="Images: the disk images servers are deployed from, uploaded or fetched from a URL.",
    no_args_is_help=True,
)

IMAGE_HELP = "Image id, or its name when unique."
ImageArg = Annotated[str, typer.Argument(help=IMAGE_HELP)]
FileArg = Annotated[
    Path,
    typer.Argument(
        help="The image file.", exists=True, dir_okay=False, readable=True, resolve_path=True
    ),
]


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the image.")],
    file: Annotated[
        Path | None,
        typer.Option(
            help="Upload this file as the image's data.",
            exists=True,
            dir_okay=False,
            readable=True,
            resolve_path=True,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Deploy from this URL instead (needs --sha256 and --size)."),
    ] = None,
    sha256: Annotated[str | None, typer.Option(help="With --url: sha256 of the data.")] = None,
    size: Annotated[int | None, typer.Option(min=0, help="With --url: size in bytes.")] = None,
    disk_format: Annotated[DiskFormat, typer.Option(help="raw or qcow2.")] = DiskFormat.RAW,
    public: Annotated[
        bool, typer.Option(help="Admins: every project may use it (else yours only).")
    ] = False,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create an image from a file (uploaded with a progress bar) or from a URL the
    deploy ramdisk downloads. Without either it stays queued until `tetsu image upload`."""
    if file is not None and url is not None:
        raise typer.BadParameter("give --file or --url, not both", param_hint="--file")
    if url is None and (sha256 is not None or size is not None):
        raise typer.BadParameter("--sha256 and --size go with --url", param_hint="--url")
    if url is not None and (sha256 is None or size is None):
        raise typer.BadParameter(
            "the deploy checks what it downloads: give --sha256 and --size", param_hint="--url"
        )
    body: Resource = {
        "name": name,
        "disk_format": disk_format.value,
        "visibility": "public" if public else "private",
    }
    if url is not None:
        body.update(source_url=url, sha256=sha256.lower() if sha256 else None, size=size)
    with connect(ctx, endpoint, token) as api:
        image = api.images.create(body)
        if file is not None:
            image = _upload_or_remove(api, image, file)
    print_resource(image, fmt)


def _upload_or_remove(api: APIClient, image: Resource, file: Path) -> Resource:
    """Upload; if that fails (or is interrupted), remove the empty image again."""
    try:
        return api.images.upload(image["id"], file, progress=stderr_console())
    except (APIError, KeyboardInterrupt):
        try:
            api.images.delete(image["id"])
        except APIError as exc:
            print_step(f"could not remove the empty image {image['id']}: {exc}")
        else:
            print_step(f"removed the image {image['name']} again: its upload did not finish")
        raise


@app.command("upload")
def upload(
    ctx: typer.Context,
    image: ImageArg,
    file: FileArg,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Upload the data of a queued image; it becomes active with its size and sha256."""
    with connect(ctx, endpoint, token) as api:
        found = api.images.find(image)
        uploaded = api.images.upload(found["id"], file, progress=stderr_console())
    print_resource(uploaded, fmt)


@app.command("list")
def list_images(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only images with this name.")] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List your project's images and the public ones."""
    with connect(ctx, endpoint, token) as api:
        images = api.images.list(name=name)
    print_list(images, IMAGE_COLUMNS, fmt)


commands = ResourceCommands(app, "image", lambda api: api.images, IMAGE_HELP)
commands.add_show("Show an image.")
commands.add_delete("Delete an image (refused while a server uses it).")
