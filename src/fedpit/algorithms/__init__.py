"""Federated methods, one module each; select one with ``algorithm = "..."``."""

from __future__ import annotations

from . import cenit, fedit, fedmit, fedpit, fedpit_mix, fedprox, fewfedweight, locit, locit_sa
from .base import ClientReply, ClientResult, ClientState, LocalBudget, Method, MethodParams, RoundContext

REGISTRY: dict[str, Method] = {m.NAME: m for m in (fedpit, fedpit_mix, fedit, fedmit, fedprox, fewfedweight,
                                                   locit, locit_sa, cenit)}


def get_method(name: str) -> Method:
    from ..errors import ConfigError

    if name not in REGISTRY:
        raise ConfigError(f"algorithm: '{name}' is not one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "get_method", "ClientReply", "ClientResult", "ClientState", "LocalBudget", "Method",
           "MethodParams", "RoundContext"]
