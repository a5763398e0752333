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

from .adapters import StateDict
from .errors import ConfigError
from .rundir import ADAPTER_FILES, load_adapter_state, read_adapter_folder, save_adapter_folder

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
    adapter = load_adapter_state(folder)  # a damaged file is a one-line error naming it
    base = stacked_on(folder)
    if base is None:
        return adapter, None
    if not (base / ADAPTER_FILES[0]).is_file():
        raise ConfigError(
            f"{folder}: a stacked private adapter (fedpit.json personal = stacked) without the shared adapter it "
            f"sits on ({base}); it is not a model alone"
        )
    shared = load_adapter_state(base)
    if state_digest(shared) != meta.get("stacked_on_sha256"):
        raise ConfigError(f"{base}: not the shared adapter {folder} was trained on (stacked_on_sha256 differs)")
    return adapter, shared


def single_adapter_folder(folder: str | os.PathLike) -> Path:
    """An adapter folder a single-adapter tool (lm-eval's ``peft=``) loads correctly: ``folder`` itself, or for a
    stacked private adapter ``folder/merged/``, written once: peft's ``add_weighted_adapter(combination_type="cat")``
    concatenates the two LoRA adapters into one of rank r_private + r_shared whose delta is their sum (the same
    model up to float rounding in the order of the sum)."""
    folder = Path(folder)
    local, shared = read_personal(folder)
    if shared is None:
        return folder
    out = folder / "merged"
    pc, meta = read_adapter_folder(folder)
    key = state_digest(local) + meta["stacked_on_sha256"]
    if (out / "fedpit.json").is_file() and read_adapter_folder(out)[1].get("merged_from") == key:
        return out
    from peft import PeftModel, get_peft_model_state_dict

    from .backbone import load_backbone

    bb = load_backbone(meta.get("model") or pc["base_model_name_or_path"], dtype="fp32", device="cpu")
    model = PeftModel.from_pretrained(bb.model, str(folder))
    model.load_adapter(str(folder / meta["stacked_on"]), adapter_name=SHARED_SUBFOLDER)
    model.base_model.add_weighted_adapter(["default", SHARED_SUBFOLDER], [1.0, 1.0], "merged", combination_type="cat")
    config = model.peft_config["merged"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    meta = {k: v for k, v in meta.items() if not k.startswith("stacked_on")}
    meta |= {"personal": "merged", "merged_from": key}
    save_adapter_folder(out, get_peft_model_state_dict(model, adapter_name="merged"), config, meta)
    return out
