"""Alembic's entry point: runs the migrations online against the configured URL."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlmodel import SQLModel

from libs.db import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from libs.db.engine import make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
if url is None:
    raise RuntimeError("sqlalchemy.url is not set")


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # sqlmodel's AutoString is a plain VARCHAR: render it as sa.String so migrations
    # do not import sqlmodel internals.
    if type_ == "type" and type(obj).__name__ == "AutoString":
        length = getattr(obj, "length", None)
        return f"sa.String(length={length})" if length else "sa.String()"
    return False


engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
