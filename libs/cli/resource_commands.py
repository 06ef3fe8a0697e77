"""The ``list``, ``show`` and ``delete`` commands most resource groups share, built for one
API collection from its noun, its table columns and their help texts."""

# No ``from __future__ import annotations``: typer reads a command's annotations when the
# command is added, and the argument's help is the builder's, not a module-level name.

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from .client import APIClient, Collection
from .output import Column, OutputFormat, print_list, print_note, print_resource
from .session import EndpointOption, FormatOption, TokenOption, connect


@dataclass(frozen=True)
class ResourceCommands:
    """Adds the standard commands of one resource group to the group's typer ``app``.

    ``noun`` names the commands' argument (``tetsu flavor show FLAVOR``) and the item in
    what they print; ``collection`` picks the group's collection off an API client. A
    group's help lists its commands in the order they were added.
    """

    app: typer.Typer
    noun: str
    collection: Callable[[APIClient], Collection]
    argument_help: str

    def add_list(self, columns: Sequence[Column], help_text: str) -> None:
        """``list``: every item, as a table of ``columns`` or as JSON."""

        @self.app.command("list", help=help_text)
        def list_items(
            ctx: typer.Context,
            endpoint: EndpointOption = None,
            token: TokenOption = None,
            fmt: FormatOption = OutputFormat.TABLE,
        ) -> None:
            with connect(ctx, endpoint, token) as api:
                items = self.collection(api).list()
            print_list(items, columns, fmt)

    def add_show(self, help_text: str) -> None:
        """``show ITEM``: every field of one item, found by id or name."""

        @self.app.command("show", help=help_text)
        def show(
            ctx: typer.Context,
            ident: Annotated[str, self._argument()],
            endpoint: EndpointOption = None,
            token: TokenOption = None,
            fmt: FormatOption = OutputFormat.TABLE,
        ) -> None:
            with connect(ctx, endpoint, token) as api:
                found = self.collection(api).find(ident)
            print_resource(found, fmt)

    def add_delete(self, help_text: str, *, label: str = "name") -> None:
        """``delete ITEM``; the note it prints names the item by its ``label`` and id."""

        @self.app.command("delete", help=help_text)
        def delete(
            ctx: typer.Context,
            ident: Annotated[str, self._argument()],
            endpoint: EndpointOption = None,
            token: TokenOption = None,
        ) -> None:
            with connect(ctx, endpoint, token) as api:
                collection = self.collection(api)
                found = collection.find(ident)
                collection.delete(found["id"])
            print_note(f"deleted {self.noun} {found[label]} ({found['id']})")

    def _argument(self) -> Any:
        # The metavar names the argument after the noun in help and in errors
        # ("Missing argument 'flavor'."), as a parameter called so would be.
        return typer.Argument(metavar=self.noun, help=self.argument_help)
