"""Federated methods, one module each; select one with ``algorithm = "..."``."""

from __future__ import annotations

from . import fedit
from .base import ClientReply, ClientState, LocalBudget, Method, RoundContext

REGISTRY: dict[str, Method] = {m.NAME: m for m in (fedit,)}


def get_method(name: str) -> Method:
    from ..errors import ConfigError

    if name not in REGISTRY:
        raise ConfigError(f"algorithm: '{name}' is not one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "get_method", "ClientReply", "ClientState", "LocalBudget", "Method", "RoundContext"]
