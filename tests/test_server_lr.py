"""``federation.server_lr``: FedIT turned down (the server applies a fraction of the averaged update)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedpit.adapters import load_state
from fedpit.algorithms import REGISTRY
from fedpit.algorithms.base import ClientReply, server_step
from fedpit.config import load_config
from fedpit.errors import ConfigError
from fedpit.runner import Runner


def _round(run_dir: Path, r: int) -> dict:
    return load_state(run_dir / "rounds" / f"round_{r:03d}" / "adapter_model.safetensors")


def test_server_step_moves_the_given_share_of_the_way():
    old = {"w": torch.zeros(3), "v": torch.ones(3)}
    new = {"w": torch.tensor([2.0, -4.0, 6.0]), "v": torch.full((3,), 3.0)}
    assert server_step(old, new, 1.0) is new  # 1.0: the aggregate itself, untouched
    half = server_step(old, new, 0.5)
    assert torch.equal(half["w"], torch.tensor([1.0, -2.0, 3.0])) and torch.equal(half["v"], torch.full((3,), 2.0))
    assert torch.equal(server_step(old, new, 0.0)["w"], old["w"])


def test_method_aggregate_applies_server_lr_after_the_methods_own_aggregate():
    cfg = load_config(overrides=["federation.server_lr=0.25"])
    old = {"w": torch.zeros(2)}
    replies = [ClientReply({"w": torch.tensor([4.0, 8.0])}, 1), ClientReply({"w": torch.tensor([0.0, 0.0])}, 3)]
    out = REGISTRY["fedit"].aggregate(cfg, old, replies)  # FedAvg [1, 2], a quarter of the way
    assert torch.equal(out["w"], torch.tensor([0.25, 0.5]))


def test_server_lr_one_is_fedit_and_one_half_halves_lora_b_after_a_round(tiny_cfg, tmp_path):
    one_round = replace(tiny_cfg, federation=replace(tiny_cfg.federation, rounds=1))
    full = Path(Runner(replace(one_round, run_name="full"), show_progress=False).run()["run_dir"])
    explicit = replace(one_round, run_name="one", federation=replace(one_round.federation, server_lr=1.0))
    same = Path(Runner(explicit, show_progress=False).run()["run_dir"])
    halved = replace(one_round, run_name="half", federation=replace(one_round.federation, server_lr=0.5))
    half = Path(Runner(halved, show_progress=False).run()["run_dir"])
    start, a, b, h = _round(full, 0), _round(full, 1), _round(same, 1), _round(half, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)  # server_lr = 1.0 is FedIT bit for bit
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(start[k]) == 0 for k in lora_b)  # B starts at zero
    assert all(torch.equal(h[k], a[k] * 0.5) for k in lora_b)  # exactly half of FedIT's step from zero
    assert any(not torch.equal(h[k], a[k]) for k in a if "lora_A" in k)


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_server_lr_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match="federation.server_lr"):
        load_config(overrides=[f"federation.server_lr={value}"])
