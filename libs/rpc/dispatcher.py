"""Turns a request into a call on an endpoint: ``getattr(endpoint, method)(ctxt, **args)``.

An endpoint is any object with a ``RPC_API_VERSION = "X.Y"`` attribute whose reachable
methods are marked with :func:`expose`. Nothing else is reachable from the wire: names that
start with ``_``, unmarked methods and plain attributes are all :class:`NoSuchMethod`.
"""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from .context import RequestContext
from .errors import InvalidArguments, NoSuchMethod, UnsupportedVersion
from .target import parse_version, version_is_compatible

F = TypeVar("F", bound=Callable[..., Any])

_EXPOSED = "__tetsu_rpc_exposed__"


def expose(func: F) -> F:
    """Mark a method as callable over RPC."""
    setattr(func, _EXPOSED, True)
    return func


def is_exposed(func: object) -> bool:
    return callable(func) and getattr(func, _EXPOSED, False) is True


class _Binder:
    """Checks a method's arguments against its signature and converts them by type hint."""

    def __init__(self, func: Callable[..., Any]) -> None:
        signature = inspect.signature(func)
        params = list(signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"RPC method {func.__qualname__} must take the context first")
        try:
            hints = typing.get_type_hints(func)
        except (NameError, TypeError):
            hints = {}
        self._adapters: dict[str, TypeAdapter[Any] | None] = {}
        self._required: set[str] = set()
        self._var_kwargs = False
        for param in params[1:]:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self._var_kwargs = True
                continue
            if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
                raise TypeError(f"RPC method {func.__qualname__}: arguments go by name only")
            hint = hints.get(param.name)
            self._adapters[param.name] = TypeAdapter(hint) if hint is not None else None
            if param.default is inspect.Parameter.empty:
                self._required.add(param.name)

    def bind(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        unknown = [name for name in args if name not in self._adapters]
        if unknown and not self._var_kwargs:
            raise InvalidArguments(f"{method}() got unexpected argument(s): {sorted(unknown)}")
        missing = self._required.difference(args)
        if missing:
            raise InvalidArguments(f"{method}() is missing argument(s): {sorted(missing)}")
        bound: dict[str, Any] = {}
        for name, value in args.items():
            adapter = self._adapters.get(name)
            if adapter is None:
                bound[name] = value
                continue
            try:
                bound[name] = adapter.validate_python(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise InvalidArguments(
                    f"{method}(): argument {name!r}: {first.get('msg', 'invalid value')}"
                ) from None
        return bound


class Dispatcher:
    """Finds the endpoint method for a request and calls it with checked arguments."""

    def __init__(self, endpoints: Sequence[object]) -> None:
        if not endpoints:
            raise ValueError("a dispatcher needs at least one endpoint")
        for endpoint in endpoints:
            version = getattr(endpoint, "RPC_API_VERSION", None)
            if not isinstance(version, str):
                raise TypeError(f"{type(endpoint).__name__} has no RPC_API_VERSION = 'X.Y'")
            parse_version(version)
        self._endpoints = tuple(endpoints)
        self._binders: dict[tuple[int, str], _Binder] = {}
        self._lock = threading.Lock()

    def dispatch(
        self, ctxt: RequestContext, method: str, args: dict[str, Any], version: str
    ) -> Any:
        func = self._lookup(method, version)
        return func(ctxt, **self._binder(func, method).bind(method, args))

    def _lookup(self, method: str, version: str) -> Callable[..., Any]:
        if method.startswith("_") or not method.isidentifier():
            raise NoSuchMethod(f"no method {method!r}")
        offered: list[str] = []
        for endpoint in self._endpoints:
            func = getattr(endpoint, method, None)
            if not is_exposed(func):
                continue
            endpoint_version: str = endpoint.RPC_API_VERSION  # type: ignore[attr-defined]
            if version_is_compatible(endpoint_version, version):
                return typing.cast(Callable[..., Any], func)
            offered.append(endpoint_version)
        if offered:
            raise UnsupportedVersion(
                f"{method!r} is served at version(s) {', '.join(offered)}, not {version}"
            )
        raise NoSuchMethod(f"no method {method!r}")

    def _binder(self, func: Callable[..., Any], method: str) -> _Binder:
        owner = getattr(func, "__self__", func)
        key = (id(owner), method)
        binder = self._binders.get(key)
        if binder is None:
            with self._lock:
                binder = self._binders.get(key) or _Binder(func)
                self._binders[key] = binder
        return binder
