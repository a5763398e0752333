"""Federated methods, one module each; select one with ``algorithm = "..."``.

Each module registers one :class:`~fedpit.algorithms.base.Method` (``register(Method(...))``); :func:`get_method`
finds every module in this package, so adding a method is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import ConfigError
from .base import REGISTRY, ClientReply, ClientResult, ClientState, Method, RoundContext


def load_all() -> dict[str, Method]:
    """Import every method module of this package (each registers itself); the registry, by name."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY


def get_method(name: str) -> Method:
    """The registered method called ``name``; a one-line ``ConfigError`` naming the valid ones otherwise."""
    if name not in load_all():
        raise ConfigError(f"algorithm: '{name}' is not one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


load_all()

__all__ = [
    "REGISTRY",
    "get_method",
    "load_all",
    "ClientReply",
    "ClientResult",
    "ClientState",
    "Method",
    "RoundContext",
]
