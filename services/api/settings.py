"""Settings of the API service (``[api]`` in the TOML file, ``TETSU_*`` variables)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from libs.config import CommonSettings


class APISettings(CommonSettings):
    section: ClassVar[str] = "api"

    host: str = Field(default="127.0.0.1", description="Address the HTTP API listens on")
    port: int = Field(default=8000, ge=0, le=65535, description="Port of the HTTP API")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bootstrap admin bearer token (TETSU_ADMIN_TOKEN); no admin without it",
    )
    token_ttl_seconds: int = Field(default=86400, gt=0, description="Lifetime of a user token")
    token_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long an API process remembers whom a token belongs to: a deleted "
        "user's tokens keep working in the other API processes for up to this long; 0 looks "
        "every token up in the database",
    )
    image_dir: Path = Field(default=Path("images"), description="Where uploaded images live")
    public_url: str | None = Field(
        default=None,
        description="Base URL the API is reached at, for Location headers and ramdisk callbacks",
    )
    event_stream_keepalive: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive comments on an event stream"
    )
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes serving the API's port (tetsu service api): one process uses "
        "one CPU at most, as Python runs one thread at a time; Ironic's and Nova's API "
        "workers, one per CPU, are the same idea",
    )
    event_stream_queue: int = Field(
        default=1000,
        ge=1,
        description="Events one stream client may fall behind by before it is disconnected",
    )
