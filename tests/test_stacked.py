"""fedpit.personal = "stacked": a private adapter trained on top of the frozen shared one (backbone + shared + private).

Checked on the tiny random LLaMA: the stack freezes the shared adapter and trains the private one, the upload is the
one independent personalization makes, IFS is scored by the stack, the run folder records the stack and round-trips
through resume, and evaluate / chat / the held-out personal loss all use the stack.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict

from fedpit.adapter_folder import SHARED
from fedpit.adapters import load_state, max_abs_diff
from fedpit.algorithms import RoundContext, fedpit
from fedpit.algorithms.base import SHARED_PREFIX, ClientState
from fedpit.config import Config, FedPITConfig, TrainConfig, load_config
from fedpit.data import Example, load_demo
from fedpit.errors import ConfigError
from fedpit.evaluate import engine_for, evaluate
from fedpit.runner import Runner
from fedpit.selfgen import SelfGenReport

SYNTH = [
    Example(
        instruction=f"Synthetic task {i}: name a habit that helps sleep, number {i}.",
        output=f"Habit {i}: a fixed bedtime, a dark room and no screens for the last hour of the day.",
        category="synthetic",
    )
    for i in range(5)
]


@pytest.fixture
def fixed_synthetic(monkeypatch):
    monkeypatch.setattr(fedpit, "self_generate", lambda *a, **k: (list(SYNTH), SelfGenReport(kept=len(SYNTH))))


def _perturbed(engine, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in engine.initial_adapter.items()}


def ctx(personal="independent", round=1, **kw):
    cfg = Config(train=TrainConfig(local_steps=3, batch_size=2), fedpit=FedPITConfig(personal=personal, **kw))
    return RoundContext(round=round, client_id=0, lr=2e-2, seed=5, cfg=cfg)


def _loss(engine, adapter, data, shared=None):
    engine.load_adapter(adapter)
    with engine.stacked(shared):
        return engine.mean_loss(engine.encode(data))


def test_stack_trains_the_private_adapter_only_and_adds_both(engine):
    shared = _perturbed(engine)
    data = load_demo("train")[:6]
    trainable_before = [n for n, p in engine.model.named_parameters() if p.requires_grad]
    engine.load_adapter(engine.initial_adapter)
    with engine.stacked(shared):
        assert engine.model.base_model.active_adapters == ["default", SHARED]
        assert all(SHARED not in n for n, p in engine.model.named_parameters() if p.requires_grad)
        engine.train(data, lr=2e-2, steps=3, batch_size=2, seed=3)
        private = engine.adapter_state()
        in_slot = get_peft_model_state_dict(engine.model, adapter_name=SHARED)
    assert all(torch.equal(in_slot[k], shared[k]) for k in shared)  # the shared adapter is frozen, bit for bit
    assert max_abs_diff(private, engine.initial_adapter) > 0  # the private one learned
    # outside the block: one active adapter, the same trainable tensors as before
    assert engine.model.base_model.active_adapters == ["default"]
    assert [n for n, p in engine.model.named_parameters() if p.requires_grad] == trainable_before

    # an untrained private adapter (LoRA B = 0) on top of the shared one is exactly the shared model
    assert _loss(engine, engine.initial_adapter, data, shared) == _loss(engine, shared, data)
    stacked, shared_only, private_only = (
        _loss(engine, private, data, shared),
        _loss(engine, shared, data),
        _loss(engine, private, data),
    )
    assert len({stacked, shared_only, private_only}) == 3  # the personalized model is neither part alone


def test_stacked_fedpit_uploads_what_independent_does_and_keeps_the_stack(engine, fixed_synthetic):
    g = _perturbed(engine)
    data = load_demo("train")[:6]
    ind = fedpit.client_update(engine, g, data, ClientState(), ctx())
    st = fedpit.client_update(engine, g, data, ClientState(), ctx("stacked"))
    assert all(torch.equal(st.reply.adapter[k], ind.reply.adapter[k]) for k in ind.reply.adapter)
    assert ind.state.shared == {}  # independent: the state file is what it always was
    assert all(torch.equal(st.state.shared[k], g[k]) for k in g)  # stacked on the adapter received this round
    assert max_abs_diff(st.state.local, engine.initial_adapter) > 0
    assert max_abs_diff(st.state.local, ind.state.local) > 0

    # round 2: the private adapter continues on top of the new shared adapter
    g2 = _perturbed(engine, seed=2)
    nxt = fedpit.client_update(engine, g2, data, st.state, ctx("stacked", round=2))
    fresh = fedpit.client_update(engine, g2, data, ClientState(), ctx("stacked", round=2))
    assert all(torch.equal(nxt.state.shared[k], g2[k]) for k in g2)
    assert max_abs_diff(nxt.state.local, fresh.state.local) > 0


def test_ifs_is_scored_by_the_stack(engine, fixed_synthetic, monkeypatch):
    seen = []

    def spy(eng, cands):
        seen.append((list(eng.model.base_model.active_adapters), eng.adapter_state()))
        return [1.0] * len(cands), [2.0] * len(cands)

    monkeypatch.setattr(fedpit, "ifs_terms", spy)
    g = _perturbed(engine)
    data = load_demo("train")[:6]
    prev = ClientState(_perturbed(engine, seed=3), {})
    fedpit.client_update(engine, g, data, prev, ctx("stacked", select_by="ifs", candidates=5, keep=2))
    fedpit.client_update(engine, g, data, prev, ctx(select_by="ifs", candidates=5, keep=2))
    (stacked_active, stacked_loaded), (ind_active, ind_loaded) = seen
    assert stacked_active == ["default", SHARED] and ind_active == ["default"]
    assert max_abs_diff(stacked_loaded, prev.local) == 0 == max_abs_diff(ind_loaded, prev.local)


def test_client_state_file_holds_the_shared_adapter_under_its_own_prefix(tmp_path):
    local, shared = {"a.weight": torch.ones(2)}, {"a.weight": torch.zeros(2)}
    ClientState(local, shared).save(tmp_path / "s.safetensors")
    back = ClientState.load(tmp_path / "s.safetensors")
    assert torch.equal(back.local["a.weight"], local["a.weight"])
    assert torch.equal(back.shared["a.weight"], shared["a.weight"])
    assert any(k.startswith(SHARED_PREFIX) for k in load_state(tmp_path / "s.safetensors"))
    ClientState(local).save(tmp_path / "i.safetensors")
    assert list(load_state(tmp_path / "i.safetensors")) == ["local.a.weight"]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["algorithm=fedpit-mix", "fedpit.personal=stacked"], "fedpit.personal: stacked applies to fedpit only"),
        (["fedpit.personal=shared"], "fedpit.personal: must be one of independent, stacked"),
    ],
)
def test_bad_personal_settings_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.fixture
def stacked_cfg(tiny_cfg):
    return replace(
        tiny_cfg,
        algorithm="fedpit",
        fedpit=replace(tiny_cfg.fedpit, personal="stacked"),
        train=replace(tiny_cfg.train, lr=2e-2),
    )


def test_stacked_run_folder_records_the_stack_resumes_bit_identically_and_evaluates_it(stacked_cfg, fixed_synthetic):
    full = Runner(replace(stacked_cfg, run_name="full"), show_progress=False).run()
    part = Runner(replace(stacked_cfg, run_name="part"), show_progress=False).run(stop_after=1)
    from fedpit.cli import main

    assert main(["run", "--resume", part["run_dir"], "--quiet"]) == 0
    resumed = json.loads((Path(part["run_dir"]) / "summary.json").read_text())
    assert resumed["personal_test_loss"] == full["personal_test_loss"]
    rd = Path(full["run_dir"])
    for k in range(3):
        for f in ("adapter_model.safetensors", "shared/adapter_model.safetensors"):
            a = load_state(rd / "clients" / f"client_{k}" / "final" / f)
            b = load_state(Path(part["run_dir"]) / "clients" / f"client_{k}" / "final" / f)
            assert max_abs_diff(a, b) == 0.0

    # the final private adapter sits on the shared adapter its client received in its last round (round 2: round 1's)
    folder = rd / "clients" / "client_0" / "final"
    meta = json.loads((folder / "fedpit.json").read_text())
    assert meta["personal"] == "stacked" and meta["stacked_on"] == "shared"
    received = load_state(rd / "rounds" / "round_001" / "adapter_model.safetensors")
    assert max_abs_diff(load_state(folder / "shared" / "adapter_model.safetensors"), received) == 0.0

    # evaluate scores the stack: its reference loss is the run's personal_test_loss, not either part alone
    tests = load_demo("test")[: stacked_cfg.eval.max_examples]
    eng = engine_for(folder, max_seq_len=stacked_cfg.model.max_seq_len, dtype="fp32")
    kw = dict(max_new_tokens=4, batch_size=4, embed=lambda texts: [[1.0, 0.0] for _ in texts])
    stacked = evaluate(eng, folder, tests, **kw).metrics["reference_loss"]
    assert stacked == pytest.approx(full["personal_test_loss"][0], abs=1e-5)
    private_only = evaluate(eng, load_state(folder / "adapter_model.safetensors"), tests, **kw)
    shared_only = evaluate(eng, folder / "shared", tests, **kw)
    assert len({stacked, private_only.metrics["reference_loss"], shared_only.metrics["reference_loss"]}) == 3

    # chat loads both adapters and activates both
    from fedpit.generate import load_for_inference

    model, _, _ = load_for_inference(folder, dtype="fp32")
    assert model.base_model.active_adapters == ["default", "shared"]

    # for a single-adapter tool (lm-eval) the stack is one rank-2r peft folder (peft's cat merge): the same model
    from fedpit.personal import single_adapter_folder

    merged = single_adapter_folder(folder)
    assert merged == folder / "merged" and json.loads((merged / "adapter_config.json").read_text())["r"] == 8
    m_eng = engine_for(merged, max_seq_len=stacked_cfg.model.max_seq_len, dtype="fp32")
    assert evaluate(m_eng, merged, tests, **kw).metrics["reference_loss"] == pytest.approx(stacked, abs=1e-5)
    stamp = (merged / "adapter_model.safetensors").stat().st_mtime_ns
    assert single_adapter_folder(folder) == merged  # written once
    assert (merged / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert single_adapter_folder(folder / "shared") == folder / "shared"

    # without the shared adapter it sits on (or with another one) the private adapter is refused
    (folder / "shared" / "adapter_model.safetensors").rename(folder / "elsewhere.safetensors")
    with pytest.raises(ConfigError, match="without the shared adapter it sits on"):
        evaluate(eng, folder, tests, **kw)
    from safetensors.torch import save_file

    key = next(iter(received))
    save_file(received | {key: received[key] + 1}, folder / "shared" / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match="not the shared adapter"):
        evaluate(eng, folder, tests, **kw)
    assert main(["evaluate", "--adapter", str(folder), "--limit", "2", "--out", str(rd / "ev")]) == 2


def test_independent_run_folder_is_unchanged(tiny_cfg, fixed_synthetic):
    summary = Runner(replace(tiny_cfg, algorithm="fedpit", run_name="ind"), show_progress=False).run()
    folder = Path(summary["run_dir"]) / "clients" / "client_0" / "final"
    assert not (folder / "shared").exists()
    assert set(json.loads((folder / "fedpit.json").read_text())) == {
        "model",
        "template",
        "algorithm",
        "client",
        "fedpit_version",
    }
    states = sorted((folder.parent).glob("state.round_*.safetensors"))
    assert states and all(all(k.startswith("local.") for k in load_state(f)) for f in states)


def test_flower_simulation_keeps_the_stack_on_the_node_like_the_in_process_runner(stacked_cfg):
    """The Flower client writes the same stacked personal folders (shared/ under final/) as the in-process runner."""
    from fedpit.config import set_value
    from fedpit.flower.simulation import simulate

    def cfg(name):
        c = replace(stacked_cfg, run_name=name)
        for item in ("selfgen.num_instructions=2", "selfgen.max_instruction_tokens=8", "selfgen.max_response_tokens=8"):
            set_value(c, *item.split("="))
        set_value(c, "selfgen.measure", "false")
        return c.validate()

    ref = Runner(cfg("inproc"), show_progress=False).run()
    sim = simulate(cfg("sim"))
    files = lambda s: {str(p.relative_to(s["run_dir"])) for p in Path(s["run_dir"]).rglob("*") if p.is_file()}  # noqa: E731
    assert files(ref) == files(sim) and "clients/client_0/final/shared/adapter_model.safetensors" in files(sim)
    assert sim["personal_test_loss"] == pytest.approx(ref["personal_test_loss"], abs=1e-5)
    meta = json.loads((Path(sim["run_dir"]) / "clients/client_1/final/fedpit.json").read_text())
    assert meta["personal"] == "stacked"
