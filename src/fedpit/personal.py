"""A stacked private adapter (backbone + shared + private, ``fedpit.personal = "stacked"``) for a single-adapter
tool: the two adapters merged into one peft folder. The stacked folder itself is written and read by
:mod:`fedpit.adapter_folder`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .adapter_folder import META, SHARED, read_adapter_folder, state_digest, write_adapter_folder


def single_adapter_folder(folder: str | os.PathLike) -> Path:
    """An adapter folder a single-adapter tool (lm-eval's ``peft=``) loads correctly: ``folder`` itself, or for a
    stacked private adapter ``folder/merged/``, written once: peft's ``add_weighted_adapter(combination_type="cat")``
    concatenates the two LoRA adapters into one of rank r_private + r_shared whose delta is their sum (the same
    model up to float rounding in the order of the sum)."""
    folder = Path(folder)
    af = read_adapter_folder(folder)
    if af.shared is None:
        return folder
    out = folder / "merged"
    key = state_digest(af.state) + af.meta["stacked_on_sha256"]
    if (out / META).is_file() and read_adapter_folder(out).meta.get("merged_from") == key:
        return out
    from peft import get_peft_model_state_dict

    from .backbone import load_backbone
    from .generate import peft_model

    bb = load_backbone(af.meta.get("model") or af.peft_config["base_model_name_or_path"], dtype="fp32", device="cpu")
    model = peft_model(bb.model, af)
    model.base_model.add_weighted_adapter(["default", SHARED], [1.0, 1.0], "merged", combination_type="cat")
    config = model.peft_config["merged"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    meta = {k: v for k, v in af.meta.items() if not k.startswith("stacked_on")}
    meta |= {"personal": "merged", "merged_from": key}
    write_adapter_folder(out, get_peft_model_state_dict(model, adapter_name="merged"), config, meta)
    return out
