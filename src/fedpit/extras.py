"""Optional parts of fedpit: which extra installs each, and the one-line error a command gives without it.

``pip install fedpit`` (in a checkout: ``pip install -e .``) is the core: data, partitions, every method, the
in-process runner, evaluation and the audits. The rest is optional:

==========  ===========================  ==========================================================
extra       installs                     needed by
==========  ===========================  ==========================================================
flower      flwr[simulation] (with Ray)  ``fedpit flower ...`` (simulation, deployment, certificates)
mcq         lm-eval                      ``--benchmarks`` with the default ``--protocol lm-eval``
judge       openai                       ``--judge-url`` (the LLM-as-judge client)
plots       matplotlib                   ``partition --plot``; the PNGs of compare, frontier, report
llamacpp    llama-cpp-python[server]     serving a GGUF judge locally (``python -m llama_cpp.server``)
hub         datasets                     ``data.train = "hf:NAME"``
all         every extra above            ``make install`` (with ``dev``)
==========  ===========================  ==========================================================

Everything that needs an extra asks :func:`require` first (cheaply: the module is located, not imported), so a
missing extra is one :class:`MissingExtra` line and exit code 2, before any model loads.
"""

from __future__ import annotations

import importlib.util

from .errors import FedpitError

# top-level module -> the extra that installs it
EXTRA_OF = {
    "flwr": "flower",
    "ray": "flower",
    "cryptography": "flower",
    "lm_eval": "mcq",
    "openai": "judge",
    "matplotlib": "plots",
    "llama_cpp": "llamacpp",
    "datasets": "hub",
}


def install_hint(extra: str) -> str:
    """How to add ``extra``: from an index, or from the source checkout."""
    return f"pip install 'fedpit[{extra}]' (in a checkout: pip install -e '.[{extra}]')"


class MissingExtra(FedpitError, ImportError):
    """An optional dependency is not installed: names the extra that provides it. A :class:`FedpitError` (the CLI
    prints one line, exit code 2) and an ``ImportError`` (code that expects one still catches it)."""

    def __init__(self, module: str, what: str):
        self.module = module
        self.extra = EXTRA_OF[module]
        ImportError.__init__(
            self, f"{what} needs the [{self.extra}] extra ({module} is not installed): {install_hint(self.extra)}"
        )
        self.name = module


def available(module: str) -> bool:
    """True when ``module`` can be imported (located without importing it; a module set to None in
    ``sys.modules``, as tests hide one, counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, what: str) -> None:
    """Raise :class:`MissingExtra` (one line naming the extra) unless ``module`` is installed."""
    if not available(module):
        raise MissingExtra(module, what)


def missing(*modules: str) -> list[str]:
    """The extras (in order, without repeats) whose module among ``modules`` is not installed."""
    return list(dict.fromkeys(EXTRA_OF[m] for m in modules if not available(m)))


__all__ = ["EXTRA_OF", "MissingExtra", "available", "install_hint", "missing", "require"]
