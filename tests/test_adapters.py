import pytest
import torch

from fedpit.adapters import load_state, max_abs_diff, mix, nbytes, save_state, weighted_average


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"l.lora_A.weight": torch.randn(4, 8, generator=g), "l.lora_B.weight": torch.randn(8, 4, generator=g)}


def test_weighted_average_is_exact_fedavg():
    a, b, c = _state(1), _state(2), _state(3)
    avg = weighted_average([a, b, c], [10, 30, 60])
    for k in a:
        expected = (0.1 * a[k].double() + 0.3 * b[k].double() + 0.6 * c[k].double()).float()
        assert torch.equal(avg[k], expected)


def test_weighted_average_of_identical_states_is_identity_and_single_state_is_copy():
    a = _state(1)
    assert max_abs_diff(weighted_average([a, a, a], [1, 5, 7]), a) < 1e-7
    out = weighted_average([a], [3])
    assert all(torch.equal(out[k], a[k]) for k in a)
    assert out["l.lora_A.weight"] is not a["l.lora_A.weight"]


def test_weighted_average_rejects_bad_input():
    a, b = _state(1), _state(2)
    with pytest.raises(ValueError, match="nothing to average"):
        weighted_average([], [])
    with pytest.raises(ValueError, match="weights"):
        weighted_average([a, b], [0, 0])
    with pytest.raises(ValueError, match="different keys"):
        weighted_average([a, {"x": torch.zeros(1)}], [1, 1])


def test_mix_beta_one_is_exactly_the_first_state():
    a, b = _state(1), _state(2)
    out = mix(a, b, 1.0)
    assert all(torch.equal(out[k], a[k]) for k in a)
    half = mix(a, b, 0.5)
    assert torch.allclose(half["l.lora_A.weight"], (a["l.lora_A.weight"] + b["l.lora_A.weight"]) / 2)


def test_nbytes_and_safetensors_round_trip(tmp_path):
    a = _state(1)
    assert nbytes(a) == (32 + 32) * 4
    save_state(a, tmp_path / "x" / "a.safetensors", {"round": 3})
    back = load_state(tmp_path / "x" / "a.safetensors")
    assert all(torch.equal(back[k], a[k]) for k in a)
    assert not list((tmp_path / "x").glob("*.tmp"))
