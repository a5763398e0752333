"""DP-SGD on each client (``algorithm = "fedit-dp"``, :mod:`fedpit.dp`) on the tiny random LLaMA with LoRA.

Opacus has an open report of wrong LoRA gradients with recent peft (its issue 820), so the per-example gradients are
checked against plain autograd: they sum to the gradient of the sum of per-example mean losses, each equals the
gradient of its example alone, and both still hold after the clients' adapters are swapped into the one wrapped
model. The accountant must be given the sample rate and the steps the engine ran; its history lives in the client's
state, so a resumed run reports the same epsilon and trains the same adapters."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedpit import dp
from fedpit.adapters import load_state, max_abs_diff
from fedpit.algorithms.base import ClientState
from fedpit.cli import main
from fedpit.config import load_config, to_toml
from fedpit.data import load_demo
from fedpit.errors import ConfigError
from fedpit.runner import Runner


@pytest.fixture(scope="module")
def dp_engine(tiny_model_path):
    """An engine without LoRA dropout (so an example's gradient is the same alone and in a batch) and room for
    examples of different lengths (so batches carry padding)."""
    from fedpit.backbone import load_backbone
    from fedpit.config import LoraConfig
    from fedpit.engine import Engine

    return Engine(load_backbone(tiny_model_path, dtype="fp32"), LoraConfig(r=4, alpha=8, dropout=0.0), max_seq_len=256)


@pytest.fixture(scope="module")
def encoded(dp_engine):
    by_length = {len(e.input_ids): e for e in dp_engine.encode(load_demo("train")[:40])}
    lengths = sorted(by_length)
    return [by_length[lengths[i]] for i in (0, len(lengths) // 3, len(lengths) // 2, -2, -1)]  # padded batches


def _random_adapter(engine, seed: int) -> dict:
    """LoRA A and B both non-zero (at B = 0 every A gradient is 0 and a check of A's gradients says nothing)."""
    g = torch.Generator().manual_seed(seed)
    return {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in engine.initial_adapter.items()}


def _per_example_grads(engine, items) -> tuple[list, list]:
    """(per-example gradients, plain gradients) of one backward pass of the summed per-example mean losses."""
    params = engine.trainable_parameters()
    for p in params:
        p.grad, p.grad_sample = None, None
    gsm = dp.grad_sample_module(engine)
    gsm.enable_hooks()
    engine.model.train()
    torch.manual_seed(0)  # the same LoRA dropout masks as in _plain_grads
    try:
        dp._backward(engine.per_example_loss(items))
    finally:
        gsm.disable_hooks()
    out = [p.grad_sample.clone() for p in params], [p.grad.clone() for p in params]
    dp._reset_hooks(engine)
    return out


def _plain_grads(engine, items) -> list:
    params = engine.trainable_parameters()
    for p in params:
        p.grad = None
    engine.model.train()
    torch.manual_seed(0)
    dp._backward(engine.per_example_loss(items))  # the hooks are off (their warning silenced as in training)
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()) + 1e-9)


def test_per_example_gradients_sum_to_the_plain_gradient_with_lora(dp_engine, encoded):
    dp_engine.load_adapter(_random_adapter(dp_engine, 1))
    samples, same_pass = _per_example_grads(dp_engine, encoded)
    plain = _plain_grads(dp_engine, encoded)  # a separate pass with the hooks off
    names = [n for n, p in dp_engine.model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert len(samples) == len(names) == 16  # every trainable LoRA matrix has per-example gradients
    for name, gs, g1, g2 in zip(names, samples, same_pass, plain):
        assert gs.shape[0] == len(encoded), name
        assert float(g2.abs().max()) > 0, name
        assert _close(gs.sum(0), g1) and _close(gs.sum(0), g2), name


def test_each_per_example_gradient_is_that_example_alone(dp_engine, encoded):
    assert len({len(e.input_ids) for e in encoded}) == len(encoded)  # padded inside the batch, not alone
    dp_engine.load_adapter(_random_adapter(dp_engine, 2))
    samples, _ = _per_example_grads(dp_engine, encoded)
    for i, item in enumerate(encoded):
        alone = _plain_grads(dp_engine, [item])
        for gs, g in zip(samples, alone):
            assert _close(gs[i], g), i


def test_one_wrap_survives_adapter_swaps_and_leaves_normal_training_unchanged(tiny_model_path, encoded):
    from opacus import GradSampleModule

    from fedpit.backbone import load_backbone
    from fedpit.config import LoraConfig
    from fedpit.engine import Engine

    engine = Engine(
        load_backbone(tiny_model_path, dtype="fp32"), LoraConfig(r=4, alpha=8, dropout=0.05), max_seq_len=256
    )
    fedit = dict(lr=1e-3, steps=2, batch_size=2, seed=3)
    engine.train(load_demo("train")[:8], **fedit)  # before any hook exists
    reference = engine.adapter_state()

    gsm = dp.grad_sample_module(engine)
    assert dp.grad_sample_module(engine) is gsm is engine.grad_sample_module  # cached on the engine
    with pytest.raises(ValueError, match="twice"):
        GradSampleModule(engine.model)  # why it is cached: Opacus refuses a second set of hooks
    ids = [id(p) for p in engine.trainable_parameters()]
    for seed in (4, 5):  # another client's adapter swapped in: the same parameters, the hooks still exact (with
        # LoRA dropout here: the same masks in both passes, and the hooks see the dropped-out inputs)
        engine.load_adapter(_random_adapter(engine, seed))
        assert [id(p) for p in engine.trainable_parameters()] == ids
        samples, _ = _per_example_grads(engine, encoded)
        for gs, g in zip(samples, _plain_grads(engine, encoded)):
            assert _close(gs.sum(0), g)
    dp.train_private(engine, load_demo("train")[:8], _dp_cfg("dp.batch_size=4"), lr=1e-3, seed=6)

    engine.load_adapter(engine.initial_adapter)  # the wrapped engine still trains FedIT bit for bit as before
    engine.train(load_demo("train")[:8], **fedit)
    assert max_abs_diff(engine.adapter_state(), reference) == 0.0


def _dp_cfg(*settings: str):
    return load_config(overrides=["algorithm=fedit-dp", "federation.rounds=2", *settings])


def test_the_accountant_gets_the_sample_rate_and_steps_the_engine_ran(dp_engine, monkeypatch):
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    cfg = _dp_cfg("dp.batch_size=1", "train.local_steps=8", "train.batch_size=64", "dp.noise_multiplier=1.5")
    examples = load_demo("train")[:5]
    seed, batches = 11, []
    draws = list(UniformWithReplacementSampler(num_samples=5, sample_rate=0.2, steps=8, generator=_gen(seed)))
    assert [] in draws and any(len(d) > 1 for d in draws)  # this seed draws an empty batch and a larger one

    original = dp_engine.per_example_loss
    monkeypatch.setattr(dp_engine, "per_example_loss", lambda items: batches.append(len(items)) or original(items))
    dp_engine.load_adapter(dp_engine.initial_adapter)
    stats, history, plan = dp.train_private(dp_engine, examples, cfg, lr=1e-3, seed=seed)
    assert plan.sample_rate == 0.2 and plan.steps == 8 and plan.expected_batch == 1
    assert history == [(1.5, 0.2, 8)]  # exactly what ran: 8 steps (empty ones included) at q = 1 / 5
    assert stats.steps == 8 and batches == [len(d) for d in draws if d]  # the Poisson draws, not fixed batches
    assert stats.examples_seen == sum(len(d) for d in draws)
    assert all(torch.isfinite(v).all() for v in dp_engine.adapter_state().values())

    _, history2, _ = dp.train_private(dp_engine, examples, cfg, lr=1e-3, seed=seed + 1, history=history)
    assert history2 == [(1.5, 0.2, 16)]  # a second round goes on from the first
    assert dp.epsilon(history2, 1e-5) > dp.epsilon(history, 1e-5) > 0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_engine_global_clipping_does_not_apply_on_top(dp_engine):
    examples = load_demo("train")[:12]
    out = []
    for clip in ("1e-9", "1.0"):
        cfg = _dp_cfg("dp.batch_size=4", "train.local_steps=3", f"train.max_grad_norm={clip}")
        dp_engine.load_adapter(dp_engine.initial_adapter)
        dp.train_private(dp_engine, examples, cfg, lr=1e-2, seed=7)
        out.append(dp_engine.adapter_state())
    assert max_abs_diff(out[0], out[1]) == 0.0 and max_abs_diff(out[0], dp_engine.initial_adapter) > 0


def test_without_noise_the_path_still_runs_and_epsilon_is_infinite(dp_engine):
    cfg = _dp_cfg("dp.noise_multiplier=0", "dp.max_grad_norm=1e6", "dp.batch_size=4", "train.local_steps=3")
    dp_engine.load_adapter(dp_engine.initial_adapter)
    stats, history, plan = dp.train_private(dp_engine, load_demo("train")[:12], cfg, lr=1e-2, seed=8)
    assert stats.steps == 3 and plan.sigma == 0.0 and history == [(0.0, 1 / 3, 3)]
    assert dp.epsilon(history, 1e-5) == math.inf
    assert dp.client_metrics(cfg, plan, history)["dp_epsilon"] == math.inf
    assert max_abs_diff(dp_engine.adapter_state(), dp_engine.initial_adapter) > 0


def test_epsilon_grows_as_the_noise_falls():
    eps = [dp.epsilon([(sigma, 0.1, 100)], 1e-5) for sigma in (4.0, 2.0, 1.0, 0.7, 0.5)]
    assert all(a < b for a, b in zip(eps, eps[1:])), eps
    assert dp.epsilon([], 1e-5) == 0.0 and dp.epsilon([(0.0, 0.1, 5)], 1e-5) == math.inf
    assert dp.epsilon([(1.0, 0.1, 50), (1.0, 0.1, 50)], 1e-5) == pytest.approx(eps[2])  # history composes


@pytest.mark.parametrize("target", [1.0, 10.0])
def test_target_epsilon_picks_a_noise_multiplier_just_within_it(target):
    cfg = _dp_cfg("dp.noise_multiplier=0", f"dp.target_epsilon={target}", "dp.batch_size=8", "train.local_steps=5")
    plan = dp.schedule(cfg, 40)
    assert plan.sample_rate == 0.2 and plan.steps == 5 and plan.sigma > 0
    eps = dp.epsilon([(plan.sigma, plan.sample_rate, plan.steps * 2)], 1e-5)  # over both rounds
    assert 0.98 * target <= eps <= target
    assert dp.epsilon([(plan.sigma * 0.95, 0.2, 10)], 1e-5) > target  # less noise would overspend


def test_client_state_keeps_the_accountant_history(tmp_path):
    history = [(1 / 3, 0.1234567890123, 7), (0.5, 1.0, 2)]
    ClientState(accountant=history).save(tmp_path / "s.safetensors")
    back = ClientState.load(tmp_path / "s.safetensors")
    assert back.accountant == history and not back.local and bool(back)  # saved by the runtimes, exactly
    assert not ClientState() and ClientState.load(None).accountant == []


def test_a_layer_without_per_example_gradients_is_refused(tiny_model_path):
    from fedpit.backbone import load_backbone
    from fedpit.config import LoraConfig
    from fedpit.engine import Engine

    lora = LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "lm_head"])
    engine = Engine(load_backbone(tiny_model_path, dtype="fp32"), lora, max_seq_len=64)
    with pytest.raises(ConfigError, match="lora.target_modules: .* rows for .*lm_head"):  # positions, not examples
        dp.train_private(engine, load_demo("train")[:6], _dp_cfg("dp.batch_size=3"), lr=1e-3, seed=1)


def test_fedit_dp_run_reports_epsilon_and_resumes_to_the_same(tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, algorithm="fedit-dp", dp=replace(tiny_cfg.dp, batch_size=2))
    cfg = replace(cfg, eval=replace(cfg.eval, max_examples=2), partition=replace(cfg.partition, num_clients=2))
    full = Runner(cfg, show_progress=False).run()
    rd = Path(full["run_dir"])
    summary = json.loads((rd / "summary.json").read_text())
    clients = summary["dp"]["clients"]
    assert set(clients) == {"0", "1"} and summary["dp"]["epsilon"] == max(clients.values()) > 0
    assert summary["dp"]["delta"] == 1e-5 and summary["personal_adapters"] == []  # no private model to save
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    for row in (r for r in rows if r["kind"] == "client"):
        assert row["dp_steps_total"] == 2 * row["round"] and row["dp_noise_multiplier"] == 1.0
    state = ClientState.load(rd / "clients" / "client_0" / "state.round_002.safetensors")
    assert state.accountant == [(1.0, state.accountant[0][1], 4)]
    assert dp.epsilon(state.accountant, 1e-5) == clients["0"]

    cfg2 = replace(cfg, output_dir=str(tmp_path / "runs2"))
    stopped = Runner(cfg2, show_progress=False).run(stop_after=1)
    assert main(["run", "--resume", stopped["run_dir"], "--quiet"]) == 0
    rd2 = Path(stopped["run_dir"])
    assert json.loads((rd2 / "summary.json").read_text())["dp"] == summary["dp"]
    final = [load_state(d / "final" / "adapter_model.safetensors") for d in (rd, rd2)]
    assert max_abs_diff(*final) == 0.0


@pytest.mark.parametrize(
    "setting, key",
    [
        ("dp.noise_multiplier=-1", "dp.noise_multiplier"),
        ("dp.delta=0", "dp.delta"),
        ("dp.delta=1.5", "dp.delta"),
        ("dp.max_grad_norm=0", "dp.max_grad_norm"),
        ("dp.batch_size=0", "dp.batch_size"),
        ("dp.target_epsilon=-2", "dp.target_epsilon"),
        ("dp.target_epsilon=8", "dp.target_epsilon"),  # with the default noise multiplier (1.0) also set
        ("dp.server_noise_multiplier=0.5", "dp.server_noise_multiplier"),  # without a clipping norm
    ],
)
def test_bad_dp_settings_exit_2_with_one_line(setting, key, tmp_path, capsys, tiny_model_path):
    out = tmp_path / "runs"
    code = main(["run", "--set", "algorithm=fedit-dp", "--set", setting, "--set", f"output_dir={out}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"fedpit: error: {key}:"), err
    assert not out.exists()


def test_an_unreachable_target_epsilon_exits_2_before_anything_is_written(tmp_path, capsys, tiny_model_path):
    out = tmp_path / "runs"
    args = ["--set", "dp.noise_multiplier=0", "--set", "dp.target_epsilon=1e-6", "--set", f"output_dir={out}"]
    code = main(["run", "--set", "algorithm=fedit-dp", "--set", f"model.name={tiny_model_path}", *args, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "dp.target_epsilon: 1e-06 cannot be reached" in err[0], err
    assert not out.exists()


def test_flower_server_dp_keys_live_in_the_dp_section():
    cfg = load_config(overrides=["flower.dp_noise_multiplier=0.1", "flower.dp_clipping_norm=2"])  # older run folders
    assert (cfg.dp.server_noise_multiplier, cfg.dp.server_clipping_norm) == (0.1, 2.0)
    text = to_toml(cfg)
    assert "dp_noise_multiplier" not in text and "[dp]\n" in text and "server_clipping_norm = 2.0" in text
