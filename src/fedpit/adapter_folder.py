"""Adapter folders: the one module that writes them, reads them (once), and verifies them.

An adapter folder is a folder ``peft.PeftModel.from_pretrained`` loads (``adapter_model.safetensors``,
``adapter_config.json``) plus ``fedpit.json`` (backbone name, template, algorithm, client, ...) and ``manifest.json``
(the sha256 of those three files). Three kinds (:attr:`AdapterFolder.kind`):

- ``global``: a shared adapter, a run's ``final/`` or a round's ``rounds/round_NNN/``;
- ``private``: a client's personalized adapter, ``clients/client_K/final/``, alone on the backbone;
- ``stacked``: a private adapter trained on top of the frozen shared one (``fedpit.personal = "stacked"``). It is
  useless alone, so its folder carries the shared adapter it was trained on, in a ``shared/`` subfolder (an ordinary
  adapter folder), and its ``fedpit.json`` says so (``"personal": "stacked"``, ``"stacked_on": "shared"`` and the
  shared adapter's tensor SHA-256, :func:`state_digest`). Loading the private folder with plain peft gives the
  private adapter alone.

:func:`read_adapter_folder` reads every file once (a stacked folder's ``shared/`` too), checks each against the
manifest from the bytes it read (one sha256 per file), and refuses a stacked folder whose shared adapter is missing
or not the one recorded, so ``fedpit evaluate`` / ``chat`` / ``compare`` / ``audit`` never score half of a stack.
Every problem is a one-line error naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load as load_safetensors

from .adapters import StateDict, check_finite, save_state
from .errors import ConfigError, TrainingError
from .manifest import MANIFEST, parse_json, parse_manifest, sha256_bytes, verify_manifest, write_json, write_manifest

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")  # what peft needs
WEIGHTS, PEFT_CONFIG = ADAPTER_FILES
META = "fedpit.json"
# the shared adapter's one name: the subfolder under a stacked private adapter (and its "stacked_on"), its peft
# adapter name when it is loaded under the private one, its key prefix in a client's state file, its model label
SHARED = "shared"
STACKED = "stacked"
GLOBAL, PRIVATE = "global", "private"
SHARED_ROLE = f"{SHARED}, under ../"  # fedpit.json "role" of the shared adapter under a stacked private one


@dataclass(frozen=True)
class AdapterFolder:
    """An adapter folder as read, verified, by :func:`read_adapter_folder`."""

    path: Path
    state: StateDict  # the adapter's tensors (peft's keys)
    peft_config: dict  # adapter_config.json
    meta: dict  # fedpit.json ({} for a peft folder from elsewhere)
    shared: AdapterFolder | None = None  # a stacked private adapter: the shared adapter under it (its shared/)

    @property
    def kind(self) -> str:
        """``stacked`` (a private adapter on a shared one), ``private`` (a client's own) or ``global``."""
        if self.shared is not None:
            return STACKED
        own = self.meta.get("client") is not None and self.meta.get("role") != SHARED_ROLE
        return PRIVATE if own else GLOBAL

    @property
    def shared_state(self) -> StateDict | None:
        return None if self.shared is None else self.shared.state


def state_digest(state: StateDict) -> str:
    """SHA-256 of an adapter's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------- write
def write_adapter_folder(
    folder: str | os.PathLike, state: StateDict, peft_config: dict, meta: dict, *, shared: StateDict | None = None
) -> None:
    """Write an adapter folder, every file atomically and ``manifest.json`` last. With ``shared`` (a stacked private
    adapter): the shared adapter first, in ``shared/``, then the private one with the stack recorded in its
    ``fedpit.json``."""
    folder = Path(folder)
    if shared:
        _write_one(folder / SHARED, shared, peft_config, meta | {"role": SHARED_ROLE})
        meta = meta | {"personal": STACKED, "stacked_on": SHARED, "stacked_on_sha256": state_digest(shared)}
    _write_one(folder, state, peft_config, meta)


def _write_one(folder: Path, state: StateDict, peft_config: dict, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_state(state, folder / WEIGHTS, metadata={"format": "pt"})
    write_json(folder / PEFT_CONFIG, peft_config)
    write_json(folder / META, meta)
    write_manifest(folder, [*ADAPTER_FILES, META])


# ---------------------------------------------------------------------------------------------------------- read
def read_adapter_folder(folder: str | os.PathLike, *, verify: bool = True) -> AdapterFolder:
    """An adapter folder (a stacked one with the shared adapter under it), each file read once, checked against its
    manifest (unless ``verify`` is False: a caller that has just verified it), its tensors readable and finite; a
    one-line error naming the file for anything else."""
    folder = Path(folder)
    files = _read_files(folder)
    if verify:
        _verify(folder, files)
    af = _parse(folder, files)
    if af.meta.get("personal") != STACKED:
        return af
    return dataclasses.replace(af, shared=_read_shared(af, verify))


def _read_shared(af: AdapterFolder, verify: bool) -> AdapterFolder:
    """The shared adapter a stacked private adapter sits on: present, and the one it was trained on."""
    base = af.path / af.meta.get("stacked_on", SHARED)
    if not (base / WEIGHTS).is_file():
        raise ConfigError(
            f"{af.path}: a stacked private adapter (fedpit.json personal = stacked) without the shared adapter it "
            f"sits on ({base}); it is not a model alone"
        )
    files = _read_files(base)
    shared = _parse(base, files)
    if state_digest(shared.state) != af.meta.get("stacked_on_sha256"):
        raise ConfigError(f"{base}: not the shared adapter {af.path} was trained on (stacked_on_sha256 differs)")
    if verify:
        _verify(base, files)
    return shared


def read_bytes(path: Path) -> bytes:
    """The one place an adapter folder's files are read."""
    return path.read_bytes()


def _read_files(folder: Path) -> dict[str, bytes]:
    """The bytes of the folder's files (the peft files, and fedpit.json and manifest.json where present)."""
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"{folder / missing[0]}: missing, so {folder} is not an adapter folder "
            f"(needs {' and '.join(ADAPTER_FILES)})"
        )
    names = [*ADAPTER_FILES, *(f for f in (META, MANIFEST) if (folder / f).is_file())]
    return {name: read_bytes(folder / name) for name in names}


def _verify(folder: Path, files: dict[str, bytes]) -> None:
    """Each file listed in the folder's manifest has its recorded sha256 (computed once, from the bytes read); a
    folder without a manifest (a peft folder from elsewhere) is taken as it is."""
    if MANIFEST in files:
        m = parse_manifest(folder / MANIFEST, files[MANIFEST])
        digests = {name: sha256_bytes(data) for name, data in files.items() if name != MANIFEST}
        verify_manifest(folder, m, inside_only=True, digests=digests)


def _parse(folder: Path, files: dict[str, bytes]) -> AdapterFolder:
    pc = parse_json(folder / PEFT_CONFIG, files[PEFT_CONFIG], "adapter config")
    meta = parse_json(folder / META, files[META], "adapter metadata") if META in files else {}
    if not isinstance(pc, dict) or not isinstance(meta, dict):
        raise ConfigError(f"{folder}: malformed adapter folder ({PEFT_CONFIG} and {META} hold JSON objects)")
    return AdapterFolder(folder, _tensors(folder / WEIGHTS, files[WEIGHTS]), pc, meta)


def _tensors(f: Path, data: bytes) -> StateDict:
    """The tensors in ``data`` (the bytes of ``f``): a one-line error naming ``f`` when it is truncated, not
    safetensors, or holds nan/inf."""
    try:
        state = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
        raise ConfigError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0][:80]})") from None
    try:
        check_finite(state, str(f))
    except TrainingError as e:
        raise ConfigError(str(e)) from None
    return state


__all__ = [
    "ADAPTER_FILES",
    "GLOBAL",
    "META",
    "PEFT_CONFIG",
    "PRIVATE",
    "SHARED",
    "STACKED",
    "WEIGHTS",
    "AdapterFolder",
    "read_adapter_folder",
    "state_digest",
    "write_adapter_folder",
]
