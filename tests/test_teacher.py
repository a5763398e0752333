"""The private model as the shared model's teacher: who answers (``selfgen.responder``), token-level distillation
(``fedpit.shared_target = distill``), public instructions picked near the client, accumulation of kept examples
across rounds, and the leak guard on every responder's answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedpit import selfgen
from fedpit.adapters import load_state, max_abs_diff
from fedpit.algorithms import REGISTRY, ClientState, RoundContext
from fedpit.cli import main
from fedpit.config import load_config, to_toml
from fedpit.data import Example
from fedpit.engine import Teacher, distill_token_loss
from fedpit.errors import ConfigError
from fedpit.rundir import RunDir
from fedpit.runner import Runner
from fedpit.selfgen import SelfGenSettings, self_generate

LOCAL = [
    Example(
        instruction=f"Explain condition number {w} in plain words for a patient.",
        output=f"Condition {w} is a common problem that doctors see often and treat with rest and care "
        f"in most cases, with follow up visits.",
    )
    for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
]


# ---------------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "sets, key",
    [
        (["algorithm=fedit", "selfgen.responder=private"], "selfgen.responder"),
        (["algorithm=locit", "fedpit.shared_target=distill"], "fedpit.shared_target"),
        (["fedpit.teacher_mix=1.5"], "fedpit.teacher_mix"),
        (["fedpit.distill_weight=-0.1"], "fedpit.distill_weight"),
        (["fedpit.distill_temperature=0"], "fedpit.distill_temperature"),
        (["selfgen.responder=teacher"], "selfgen.responder"),
        (["selfgen.public_pick=best"], "selfgen.public_pick"),
        (["fedpit.shared_target=logits"], "fedpit.shared_target"),
    ],
)
def test_a_bad_teacher_setting_is_one_error_naming_it(sets, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        load_config(overrides=sets)


def test_a_bad_teacher_setting_exits_2_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import fedpit.backbone

    monkeypatch.setattr(fedpit.backbone, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    code = main(
        ["run", "--set", "algorithm=fedit", "--set", "selfgen.responder=private", "--set", f"output_dir={tmp_path}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "selfgen.responder" in err[0] and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------- loss
def test_the_distillation_term_is_zero_for_the_teacher_itself_and_scaled_by_t_squared():
    torch.manual_seed(0)
    z, other = torch.randn(5, 11), torch.randn(5, 11)
    for t in (0.5, 1.0, 2.0):
        p = torch.softmax(z / t, dim=-1)
        assert distill_token_loss(z, p, t).abs().max() < 1e-5
        kl = (p * (p.log() - torch.log_softmax(other / t, dim=-1))).sum(-1)
        assert torch.allclose(distill_token_loss(other, p, t), t**2 * kl, atol=1e-5) and (kl > 0).all()


def _train(engine, examples, teacher=None, steps=3):
    engine.load_adapter(engine.initial_adapter)
    engine.train(examples, lr=1e-2, steps=steps, batch_size=2, seed=5, teacher=teacher)
    return engine.adapter_state()


def _trained_private(engine):
    engine.load_adapter(engine.initial_adapter)
    engine.train(LOCAL, lr=3e-2, steps=6, batch_size=4, seed=1)
    return engine.adapter_state()


def test_distill_weight_1_is_plain_training_bit_for_bit(engine):
    private = _trained_private(engine)
    plain = _train(engine, LOCAL[:4])
    taught = _train(engine, LOCAL[:4], Teacher(private, engine.initial_adapter, weight=1.0))
    assert max_abs_diff(plain, taught) == 0.0


def _kl_to(engine, student, teacher_state, examples):
    """Mean KL(p_teacher || p_student) over the examples' response tokens."""
    enc = engine.encode(examples)
    ids, labels, mask = engine._collate(enc)
    with torch.no_grad():
        engine.load_adapter(teacher_state)
        p = torch.softmax(engine._target_logits(ids, labels, mask)[0], dim=-1)
        engine.load_adapter(student)
        return float(distill_token_loss(engine._target_logits(ids, labels, mask)[0], p, 1.0).mean())


def test_the_distillation_gradient_pulls_the_student_towards_its_teacher(engine):
    private = _trained_private(engine)
    texts = [Example(instruction=e.instruction, output="Rest and fluids help most people recover.") for e in LOCAL]
    start = engine.initial_adapter
    pure_kl = _train(engine, texts, Teacher(private, start, mix=1.0, weight=0.0), steps=6)
    plain = _train(engine, texts, steps=6)
    before = _kl_to(engine, start, private, texts)
    assert _kl_to(engine, pure_kl, private, texts) < 0.9 * before
    assert _kl_to(engine, pure_kl, private, texts) < _kl_to(engine, plain, private, texts)


# ------------------------------------------------------------------------------------------------------- who answers
class Recorder:
    """Records which adapter the engine holds when each self-generation phase runs (the adapter, not the text)."""

    def __init__(self, engine, monkeypatch):
        self.engine, self.seen = engine, {}
        for phase in ("_write_instructions", "_write_responses"):
            real = getattr(selfgen, phase)
            monkeypatch.setattr(selfgen, phase, self._wrap(phase, real))

    def _wrap(self, phase, real):
        def call(*a, **k):
            self.seen[phase] = self.engine.adapter_state()
            return real(*a, **k)

        return call


def _ctx(engine, *sets, rnd=1):
    cfg = load_config(
        overrides=[
            "selfgen.num_instructions=2",
            "selfgen.max_instruction_tokens=6",
            "selfgen.max_response_tokens=8",
            "selfgen.min_response_words=1",
            "selfgen.min_words=1",
            "selfgen.measure=false",
            "train.local_steps=2",
            "train.batch_size=2",
            *sets,
        ]
    )
    return RoundContext(round=rnd, client_id=0, lr=1e-2, seed=7, cfg=cfg)


@pytest.mark.parametrize("method", ["fedpit", "fedpit-mix"])
def test_the_private_responder_answers_with_the_private_adapter_active(engine, monkeypatch, method):
    rec = Recorder(engine, monkeypatch)
    g = _trained_private(engine)  # a global adapter that is not the initial one
    ctx = _ctx(engine, f"algorithm={method}", "selfgen.responder=private", "fedpit.mix_select_by=off")
    res = REGISTRY[method].client_update(engine, g, LOCAL, ClientState(), ctx)
    assert max_abs_diff(rec.seen["_write_instructions"], g) == 0.0  # the shared model writes the instructions
    answered_with = rec.seen["_write_responses"]
    assert max_abs_diff(answered_with, g) > 0  # not the shared model...
    if method == "fedpit":  # ...but the private model after this round's real data: the one the client keeps
        assert max_abs_diff(answered_with, res.state.local) == 0.0
    shared = Recorder(engine, monkeypatch)
    REGISTRY[method].client_update(engine, g, LOCAL, ClientState(), _ctx(engine, f"algorithm={method}"))
    assert max_abs_diff(shared.seen["_write_responses"], g) == 0.0  # the default: the shared model answers


# ------------------------------------------------------------------------------------------------------- public data
def _public(tmp_path, rows):
    f = tmp_path / "public.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(f)


def test_nearest_picks_the_public_examples_closest_to_the_clients_own(tmp_path, monkeypatch):
    rows = [
        {"instruction": "Answer the patient.", "input": f"Question about {t}?", "output": f"About {t}."}
        for t in (
            "condition alpha in plain words",
            "tax returns",
            "condition beta explained",
            "football scores",
            "gardening",
            "condition gamma for a patient",
        )
    ]
    f = _public(tmp_path, rows)
    vec = {"condition": [1.0, 0.0], "other": [0.0, 1.0]}
    monkeypatch.setattr(
        "fedpit.embed.minilm_embed",
        lambda texts: (
            torch.tensor([vec["condition" if "ondition" in t else "other"] for t in texts]).numpy()
            + 1e-3 * torch.arange(len(texts))[:, None].numpy()
        ),
    )
    s = SelfGenSettings(num_instructions=3, public_data=f, public_pick="nearest")
    got, rep = self_generate(None, None, LOCAL, s, seed=0)
    assert sorted(e.input for e in got) == sorted(r["input"] for r in rows if "condition" in r["input"])
    assert all(e.category == "public" for e in got) and rep.kept == 3


def test_the_leak_guard_drops_a_copied_private_answer_whoever_wrote_it(tmp_path, monkeypatch):
    copied = LOCAL[2].output
    # public answers kept as they are: a public answer that copies a private one is dropped and counted
    f = _public(tmp_path, [{"instruction": "Q1?", "output": copied}, {"instruction": "Q2?", "output": "Unrelated."}])
    got, rep = self_generate(None, None, LOCAL, SelfGenSettings(num_instructions=2, public_data=f), seed=0)
    assert [e.instruction for e in got] == ["Q2?"] and rep.dropped["response_copy"] == 1

    # a responder (any model) that writes a private answer back: dropped and counted the same way
    def fake_gen(model, tok, prompts, s, max_new_tokens, stop, seed, **kw):
        texts = [copied] * len(prompts)
        return (texts, [True] * len(prompts)) if kw.get("return_finished") else texts

    monkeypatch.setattr(selfgen, "_gen", fake_gen)
    entered = []
    s = SelfGenSettings(num_instructions=2, public_data=f, max_attempts=1)
    got, rep = self_generate(None, None, LOCAL, s, seed=0, template="alpaca", respond=lambda: _Mark(entered))
    assert got == [] and rep.dropped["response_copy"] == 2 and entered == ["in", "out"]


class _Mark:
    def __init__(self, log):
        self.log = log

    def __enter__(self):
        self.log.append("in")

    def __exit__(self, *exc):
        self.log.append("out")


# ------------------------------------------------------------------------------------------------------ accumulation
def test_accumulation_keeps_every_earlier_kept_example_in_the_client_state(engine, tmp_path):
    g = engine.initial_adapter
    ctx1 = _ctx(engine, "algorithm=fedpit", "selfgen.accumulate=true")
    r1 = REGISTRY["fedpit"].client_update(engine, g, LOCAL, ClientState(), ctx1)
    kept1 = r1.artifacts["synthetic"]
    assert r1.state.pool == kept1
    r1.state.save(tmp_path / "s.safetensors")
    loaded = ClientState.load(tmp_path / "s.safetensors")
    assert loaded.pool == r1.state.pool and max_abs_diff(loaded.local, r1.state.local) == 0.0
    ctx2 = _ctx(engine, "algorithm=fedpit", "selfgen.accumulate=true", rnd=2)
    r2 = REGISTRY["fedpit"].client_update(engine, g, LOCAL, loaded, ctx2)
    assert r2.state.pool == kept1 + r2.artifacts["synthetic"]
    assert r2.reply.metrics["shared_pool"] == len(r2.state.pool)
    off = REGISTRY["fedpit"].client_update(engine, g, LOCAL, loaded, _ctx(engine, "algorithm=fedpit", rnd=2))
    assert off.state.pool == [] and "shared_pool" not in off.reply.metrics


TEACHER_RUN = [
    "algorithm=fedpit",
    "model.dtype=fp32",
    "model.max_seq_len=64",
    "partition.num_clients=2",
    "federation.rounds=2",
    "train.local_steps=1",
    "train.batch_size=2",
    "eval.max_examples=4",
    "lora.r=2",
    "lora.alpha=4",
    "selfgen.num_instructions=2",
    "selfgen.max_instruction_tokens=6",
    "selfgen.max_response_tokens=6",
    "selfgen.min_response_words=1",
    "selfgen.measure=false",
    "selfgen.accumulate=true",
    "fedpit.shared_target=distill",
    "fedpit.teacher_mix=0.5",
]


def test_a_teacher_run_killed_mid_round_resumes_bit_identically(tiny_model_path, tmp_path, capsys):
    """Public instructions (kept: a tiny random model's own text fails the filters) accumulated over rounds, and
    the shared adapter distilled from a mixed teacher: the pool in the client state must survive kill -9."""
    rows = [
        {"instruction": f"Public question {i} about rest?", "output": f"Public answer {i}: rest."} for i in range(9)
    ]
    pub = _public(tmp_path, rows)

    def cfg(name):
        sets = [*TEACHER_RUN, f"selfgen.public_data={pub}", f"model.name={tiny_model_path}"]
        return load_config(overrides=[*sets, f"output_dir={tmp_path}", f"run_name={name}"])

    ref = tmp_path / "ref"
    Runner(cfg("ref"), show_progress=False).run()
    f = tmp_path / "k.toml"
    f.write_text(to_toml(cfg("k")))
    env = {**os.environ, "FEDPIT_FAULT_KILL": "round_2_client_0"}
    p = subprocess.run(
        [sys.executable, "-m", "fedpit", "run", "--config", str(f), "--quiet"], env=env, capture_output=True, text=True
    )
    assert p.returncode == -9, p.stderr[-2000:]
    assert ClientState.load(RunDir(tmp_path / "k").latest_client_state(0, 1)).pool  # round 1's kept examples
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "k"), "--quiet"]) == 0, capsys.readouterr().err
    for rel in ("final", "clients/client_0/final", "clients/client_1/final"):
        a, b = (load_state(Path(d) / rel / "adapter_model.safetensors") for d in (ref, tmp_path / "k"))
        assert max_abs_diff(a, b) == 0.0, rel


def test_a_comparison_gives_the_teacher_settings_to_the_methods_with_a_private_model_only():
    from fedpit.compare import grid

    base = load_config(overrides=["selfgen.responder=private", "fedpit.shared_target=distill"])
    cells = {c.algorithm: c for _, c in grid(base, ["fedit", "fedpit", "fedpit-mix", "locit"], [1])}
    for algo in ("fedpit", "fedpit-mix"):
        assert (cells[algo].selfgen.responder, cells[algo].fedpit.shared_target) == ("private", "distill")
    for algo in ("fedit", "locit"):  # they have no private model to teach with: the settings do not apply
        assert (cells[algo].selfgen.responder, cells[algo].fedpit.shared_target) == ("shared", "text")
