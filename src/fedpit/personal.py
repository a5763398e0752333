"""A client's personalized model as an adapter folder: alone (backbone + private), or stacked (backbone + shared +
private, ``fedpit.personal = "stacked"``).

A stacked private adapter is useless alone, so its folder carries the shared adapter it was trained on top of, in a
``shared/`` subfolder, and its ``fedpit.json`` says so (``"personal": "stacked"``, ``"stacked_on": "shared"`` and the
shared adapter's SHA-256). :func:`read_personal` returns both and refuses a folder whose shared adapter is missing or
not the one recorded, so ``fedpit evaluate`` / ``chat`` / ``compare`` never score half of a stack. Both folders are
ordinary peft adapter folders; loading the private one with plain peft gives the private adapter alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .adapters import StateDict, load_state
from .errors import ConfigError
from .rundir import ADAPTER_FILES, read_adapter_folder, save_adapter_folder

STACKED, SHARED_SUBFOLDER = "stacked", "shared"


def state_digest(state: StateDict) -> str:
    """SHA-256 of an adapter's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_personal_folder(
    folder: Path, local: StateDict, shared: StateDict | None, peft_config: dict, meta: dict
) -> None:
    """The private adapter as a peft folder; stacked (``shared`` given): the shared adapter under it first, in
    ``shared/``, then the private one with the stack recorded in its ``fedpit.json``."""
    folder = Path(folder)
    if shared:
        save_adapter_folder(folder / SHARED_SUBFOLDER, shared, peft_config, meta | {"role": "shared, under ../"})
        meta = meta | {"personal": STACKED, "stacked_on": SHARED_SUBFOLDER, "stacked_on_sha256": state_digest(shared)}
    save_adapter_folder(folder, local, peft_config, meta)


def stacked_on(folder: str | os.PathLike) -> Path | None:
    """The shared adapter folder a stacked private adapter sits on (None for any other adapter folder)."""
    _, meta = read_adapter_folder(folder)
    return Path(folder) / meta["stacked_on"] if meta.get("personal") == STACKED else None


def read_personal(folder: str | os.PathLike) -> tuple[StateDict, StateDict | None]:
    """(adapter, shared adapter under it or None) of an adapter folder; a one-line error for a stacked private
    adapter whose shared adapter is missing or differs from the one it was trained on."""
    folder = Path(folder)
    _, meta = read_adapter_folder(folder)
    adapter = load_state(folder / ADAPTER_FILES[0])
    base = stacked_on(folder)
    if base is None:
        return adapter, None
    if not (base / ADAPTER_FILES[0]).is_file():
        raise ConfigError(
            f"{folder}: a stacked private adapter (fedpit.json personal = stacked) without the shared adapter it "
            f"sits on ({base}); it is not a model alone"
        )
    shared = load_state(base / ADAPTER_FILES[0])
    if state_digest(shared) != meta.get("stacked_on_sha256"):
        raise ConfigError(f"{base}: not the shared adapter {folder} was trained on (stacked_on_sha256 differs)")
    return adapter, shared
