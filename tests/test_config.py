from pathlib import Path

import pytest

from fedpit.config import Config, load_config, to_toml, valid_keys
from fedpit.errors import ConfigError


def test_defaults_are_the_cpu_demo():
    cfg = load_config()
    assert cfg.algorithm == "fedpit"
    assert cfg.partition.num_clients == 3 and cfg.partition.alpha == 1.0
    assert cfg.federation.rounds >= 2
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32 and cfg.lora.dropout == 0.05
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.data.train == "demo"


def test_set_overrides_are_coerced_to_field_types():
    cfg = load_config(
        overrides=[
            "train.lr=2e-4",
            "federation.rounds=7",
            "train.group_by_length=false",
            "lora.target_modules=q_proj,v_proj",
            "seed=3",
        ]
    )
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.federation.rounds == 7
    assert cfg.train.group_by_length is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.seed == 3


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.learning_rate=1"])
    msg = str(e.value)
    assert "train.learning_rate" in msg and "train.lr" in msg and "partition.alpha" in msg
    with pytest.raises(ConfigError, match="unknown config key 'train'"):
        load_config(overrides=["train=1"])


@pytest.mark.parametrize(
    "item, key",
    [
        ("federation.rounds=two", "federation.rounds"),
        ("train.lr=-1", "train.lr"),
        ("partition.alpha=0", "partition.alpha"),
        ("partition.alpha=nan", "partition.alpha"),
        ("partition.method=random", "partition.method"),
        ("federation.fraction=1.5", "federation.fraction"),
        ("federation.min_clients=9", "federation.min_clients"),
        ("algorithm=", "algorithm"),
        ("lora.dropout=1", "lora.dropout"),
        ("train.group_by_length=maybe", "train.group_by_length"),
        ("model.template=vicuna", "model.template"),
    ],
)
def test_impossible_values_name_the_key(item, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[item])
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_set_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["federation.rounds"])


def test_toml_file_and_round_trip(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('algorithm = "fedit"\n[federation]\nrounds = 4\n[lora]\nr = 8\ntarget_modules = ["q_proj"]\n')
    cfg = load_config(f, ["lora.r=4"])
    assert (cfg.federation.rounds, cfg.lora.r, cfg.lora.target_modules) == (4, 4, ["q_proj"])
    g = tmp_path / "back.toml"
    g.write_text(to_toml(cfg))
    assert load_config(g) == cfg


def test_toml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds=2")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    unk = tmp_path / "unk.toml"
    unk.write_text("[federation]\nround = 2\n")
    with pytest.raises(ConfigError, match="unk.toml: unknown config key 'federation.round'"):
        load_config(unk)
    typ = tmp_path / "typ.toml"
    typ.write_text('[federation]\nrounds = "x"\n')
    with pytest.raises(ConfigError, match="typ.toml: federation.rounds: expected an integer"):
        load_config(typ)


def test_valid_keys_cover_every_section():
    keys = valid_keys(Config())
    for k in ("algorithm", "model.name", "data.train", "partition.alpha", "lora.r", "train.lr", "federation.rounds"):
        assert k in keys


def test_unknown_algorithm_is_refused_where_methods_are_looked_up(capsys):
    from fedpit.algorithms import REGISTRY, get_method
    from fedpit.cli import main

    with pytest.raises(ConfigError) as e:
        get_method("fedsgd")
    assert str(e.value).startswith("algorithm: 'fedsgd' is not one of") and "fedpit" in str(e.value)
    assert set(REGISTRY) >= {"fedpit", "fedit", "locit", "cenit"}
    for argv in (["config", "--set", "algorithm=fedsgd"], ["run", "--set", "algorithm=fedsgd", "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedpit: error: algorithm: 'fedsgd'")


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_demo_toml_is_the_built_in_defaults():
    """configs/demo.toml says it writes out the defaults of `fedpit run` with no arguments: keep it true."""
    assert load_config(CONFIGS / "demo.toml") == load_config()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    assert load_config(path).algorithm
