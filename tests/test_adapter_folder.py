"""fedpit.adapter_folder: every adapter folder (global, private, stacked) written, read once, verified; and the run
folder's client paths from RunDir alone."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import fedpit.adapter_folder as af_mod
import fedpit.adapters
import fedpit.manifest
from fedpit.adapter_folder import (
    ADAPTER_FILES,
    GLOBAL,
    META,
    PRIVATE,
    SHARED,
    STACKED,
    read_adapter_folder,
    state_digest,
    write_adapter_folder,
)
from fedpit.errors import ConfigError
from fedpit.manifest import MANIFEST
from fedpit.rundir import RunDir

PC = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
META_KEYS = {"model": "m", "template": "alpaca", "algorithm": "fedpit", "fedpit_version": "0"}


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"layer.{i}.lora_{ab}.weight": torch.randn(2, 3, generator=g) for i in range(2) for ab in "AB"}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def stacked(tmp_path) -> tuple[Path, dict, dict]:
    local, shared = _state(1), _state(2)
    folder = tmp_path / "clients" / "client_0" / "final"
    write_adapter_folder(folder, local, PC, META_KEYS | {"client": 0}, shared=shared)
    return folder, local, shared


def _spy(monkeypatch) -> Counter:
    """Count, per file, every read, deserialization and sha256 pass the module makes (and any other way in)."""
    seen = Counter()

    def wrap(mod, name, key, arg=True):
        real = getattr(mod, name)

        def spy(*a, **k):
            seen[(key, str(a[0]) if arg else "")] += 1
            return real(*a, **k)

        monkeypatch.setattr(mod, name, spy)

    wrap(af_mod, "read_bytes", "read")
    wrap(af_mod, "load_safetensors", "deserialize", arg=False)
    wrap(af_mod, "sha256_bytes", "sha256", arg=False)
    wrap(fedpit.manifest, "sha256_file", "sha256_file")
    wrap(fedpit.adapters, "load_file", "load_file")
    return seen


def _reads(seen: Counter) -> dict:
    return {k[1]: v for k, v in seen.items() if k[0] == "read"}


def test_global_private_and_stacked_folders_round_trip_bit_for_bit(tmp_path, stacked):
    g = _state(3)
    write_adapter_folder(tmp_path / "final", g, PC, META_KEYS | {"client": None})
    write_adapter_folder(tmp_path / "private", g, PC, META_KEYS | {"client": 1})
    glob, priv = read_adapter_folder(tmp_path / "final"), read_adapter_folder(tmp_path / "private")
    assert (glob.kind, priv.kind) == (GLOBAL, PRIVATE) and glob.shared is None is priv.shared_state
    assert _same(glob.state, g) and glob.peft_config == PC and glob.meta == META_KEYS | {"client": None}

    folder, local, shared = stacked
    af = read_adapter_folder(folder)
    assert af.kind == STACKED and _same(af.state, local) and _same(af.shared_state, shared)
    assert af.shared.path == folder / SHARED and af.shared.kind == GLOBAL  # the shared adapter under it
    # the format on disk: two ordinary peft folders, the stack recorded in the private one's fedpit.json
    for d in (folder, folder / SHARED):
        assert {p.name for p in d.iterdir() if p.is_file()} == {*ADAPTER_FILES, META, MANIFEST}
        assert set(json.loads((d / MANIFEST).read_text())["files"]) == {*ADAPTER_FILES, META}
    stack = {"personal": STACKED, "stacked_on": SHARED, "stacked_on_sha256": state_digest(shared)}
    assert json.loads((folder / META).read_text()) == META_KEYS | {"client": 0} | stack
    assert json.loads((folder / SHARED / META).read_text())["role"] == "shared, under ../"
    assert read_adapter_folder(folder / SHARED).kind == GLOBAL


def test_a_stacked_folder_is_read_once_and_hashed_once_per_file(stacked, monkeypatch):
    folder, _, _ = stacked
    seen = _spy(monkeypatch)
    read_adapter_folder(folder)
    names = [*ADAPTER_FILES, META, MANIFEST]
    assert _reads(seen) == {str(d / n): 1 for d in (folder, folder / SHARED) for n in names}
    assert seen[("deserialize", "")] == 2  # the private and the shared safetensors, once each
    assert seen[("sha256", "")] == 6  # every file each manifest lists, once, from the bytes read
    assert not any(k[0] in ("sha256_file", "load_file") for k in seen)  # no other way to the disk


def test_evaluating_a_stacked_folder_reads_each_file_once(tmp_path, engine, monkeypatch):
    """`fedpit evaluate` / `compare`: the folder is read once and handed to engine_for and evaluate."""
    import fedpit.evaluate as ev
    from fedpit.data import load_demo

    folder, a = tmp_path / "final", engine.initial_adapter
    write_adapter_folder(folder, a, engine.peft_config_dict(), META_KEYS | {"client": 0}, shared=a)
    monkeypatch.setattr(ev, "make_engine", lambda cfg: engine)
    seen = _spy(monkeypatch)
    af = read_adapter_folder(folder)
    eng = ev.engine_for(af, max_seq_len=64, dtype="fp32")
    ev.evaluate(eng, af, load_demo("test")[:1], max_new_tokens=1, batch_size=1, embed=lambda t: [[1.0]] * len(t))
    assert set(_reads(seen).values()) == {1} and str(folder / SHARED / ADAPTER_FILES[0]) in _reads(seen)
    assert seen[("deserialize", "")] == 2 and seen[("sha256", "")] == 6
    assert not any(k[0] in ("sha256_file", "load_file") for k in seen)


def test_half_a_stack_or_a_damaged_file_is_a_one_line_error_naming_it(stacked):
    folder, _, shared = stacked
    w = folder / SHARED / ADAPTER_FILES[0]
    w.write_bytes(w.read_bytes()[:-3])  # truncated
    with pytest.raises(ConfigError, match=rf"{w}: not a readable safetensors file"):
        read_adapter_folder(folder)
    write_adapter_folder(folder / SHARED, shared, PC, {"role": "shared, under ../"})
    (folder / SHARED / META).write_text("{}\n")  # the shared folder's own files are checked against its manifest
    with pytest.raises(ConfigError, match=rf"{folder / SHARED / META}: checksum mismatch"):
        read_adapter_folder(folder)
    write_adapter_folder(folder / SHARED, _state(9), PC, {})
    with pytest.raises(ConfigError, match="not the shared adapter"):
        read_adapter_folder(folder)
    w.unlink()
    with pytest.raises(ConfigError, match="without the shared adapter it sits on") as e:
        read_adapter_folder(folder)
    assert "\n" not in str(e.value)


def test_client_paths_come_from_the_run_folder(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.client_final(2) == tmp_path / "clients" / "client_2" / "final"
    assert rd.client_round_dir(2, 3) == tmp_path / "clients" / "client_2" / "round_003"
    assert rd.client_state_file(2, 3).parent == rd.client_dir(2) and rd.final == tmp_path / "final"
    for k, r in [(0, 1), (1, 1), (1, 2)]:
        (rd.client_round_dir(k, r) / "sub").mkdir(parents=True)
        (rd.client_round_dir(k, r) / "sub" / "synthetic.jsonl").write_text("{}\n")
    rel = lambda ps: sorted(str(p.relative_to(tmp_path)) for p in ps)  # noqa: E731
    out = "clients/client_{}/round_00{}/sub/synthetic.jsonl"
    assert rel(rd.client_outputs(1)) == [out.format(1, 1), out.format(1, 2)]
    assert rel(rd.client_outputs(r=1)) == [out.format(0, 1), out.format(1, 1)]
    assert len(rd.client_outputs()) == 3
