"""Run configuration: typed dataclasses, TOML files, ``--set section.key=value`` overrides.

Unknown keys are rejected with the list of valid ones; values are coerced to the field's type and checked, so an
impossible config fails before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # packaged alias, HF id, or local folder
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cache_dir: str = ""  # converted packaged models; default: $FEDPIT_CACHE_DIR or the user cache dir
    template: str = "alpaca"  # alpaca | chat
    max_seq_len: int = 384


@dataclass
class DataConfig:
    train: str = "demo"  # "demo" (shipped), a .json/.jsonl path, or hf:NAME[:SPLIT]
    test: str = "demo"  # "demo", a path, or "" for none
    format: str = "auto"  # auto | alpaca | jsonl | medinstruct | hf
    output_field: str = ""  # which field is the answer (MedInstruct: gpt-4, gpt-3.5-turbo, ...)
    on_duplicate: str = "error"  # error | drop
    limit: int = 0  # keep the first N training examples (0 = all)


@dataclass
class PartitionConfig:
    method: str = "dirichlet"  # dirichlet | iid
    num_clients: int = 3
    alpha: float = 1.0
    label: str = "auto"  # auto | category | kmeans
    num_clusters: int = 100
    min_per_client: int = 8


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    local_epochs: int = 1
    local_steps: int = 5  # > 0 overrides local_epochs with a fixed number of optimizer steps (0: use epochs)
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-3
    lr_min: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = True


@dataclass
class FederationConfig:
    rounds: int = 3
    fraction: float = 1.0  # share of clients sampled each round
    min_clients: int = 1
    server_lr: float = 1.0  # the server applies this share of the aggregated update (1.0: FedAvg; < 1: turned down)


@dataclass
class EvalConfig:
    test_loss: bool = True  # held-out response loss of the global adapter after every round
    max_examples: int = 24
    extraction_every_round: bool = False  # training-data extraction attack on the shared adapter after each round
    extraction_n: int = 100  # private training examples attacked (0 = all)
    extraction_max_new_tokens: int = 128


@dataclass
class SelfGenSettings:
    """The [selfgen] section: how the shared model writes synthetic examples (see :mod:`fedpit.selfgen`)."""

    num_instructions: int = 6  # synthetic examples wanted per client and round (CPU demo; the journal: 32)
    demos: int = 8  # instructions shown when writing a new one (the journal: 8)
    response_demos: int = 1  # worked local examples shown when writing a response
    max_instruction_tokens: int = 40
    max_response_tokens: int = 96
    repetition_penalty: float = 1.2
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    rouge_threshold: float = 0.7
    max_attempts: int = 3
    min_words: int = 3
    max_words: int = 150
    min_response_words: int = 8
    max_repeat_ratio: float = 0.3  # share of repeated word 3-grams above which a response is degenerate
    batch_size: int = 32  # one decoding wave for the journal's 32 candidates (benchmarks/selfgen_throughput.py)
    public_data: str = ""  # ablation: a .json/.jsonl file whose examples replace self-generated ones, same count
    task_text: str = "auto"  # what a Phase A demonstration shows: "instruction", "instruction+input" or "auto"
    template: str = "model"  # prompt format for generation: model (= model.template) | auto | alpaca | chat
    measure: bool = True  # synthetic-quality measures (MiniLM relevance, diversity, closeness, IFS) every round
    responder: str = "shared"  # who writes the answers: shared (the shared model) | private (the client's own model)
    public_pick: str = "random"  # which public_data examples: random | nearest (MiniLM, to the client's own)
    accumulate: bool = False  # keep earlier rounds' kept examples in the shared adapter's training pool


TASK_TEXTS = ("auto", "instruction", "instruction+input")
RESPONDERS = ("shared", "private")
PUBLIC_PICKS = ("random", "nearest")
SHARED_TARGETS = ("text", "distill")
PRIVATE_MODEL_METHODS = ("fedpit", "fedpit-mix")  # the methods whose clients hold a private model to teach with
GEN_TEMPLATES = ("model", "auto", "alpaca", "chat")
SELECT_BY = ("off", "ifs", "relevance", "first")  # off: no selection step; first: generation order
PERSONAL = ("independent", "stacked")


@dataclass
class FedPITConfig:
    beta: float = 0.5  # fedpit-mix: upload = beta * private + (1 - beta) * public; 1.0 is FedIT
    candidates: int = 8  # fedpit-mix, and fedpit when it selects: candidates per client and round (the journal: 32)
    keep: int = 4  # fedpit-mix, and fedpit when it selects: candidates kept by the best score (the journal: 16)
    synthetic_epochs: int = 1  # passes over the synthetic set for adapters trained on synthetic data only
    select_by: str = "off"  # fedpit's selection: off (num_instructions, all kept) | ifs | relevance | first
    mix_select_by: str = "ifs"  # fedpit-mix's selection (the journal's: ifs); the same values
    shared_budget: str = "synthetic_epochs"  # synthetic_epochs | parity (FedIT's local step count)
    personal: str = "independent"  # fedpit: independent | stacked (private adapter on top of the frozen shared one)
    shared_target: str = "text"  # what the shared adapter learns from the kept synthetic examples: text | distill
    distill_weight: float = 0.5  # distill: weight of the cross-entropy on the text; 1 - it: of the teacher's KL
    distill_temperature: float = 1.0  # distill: softmax temperature T of teacher and student (the KL is scaled by T^2)
    teacher_mix: float = 1.0  # distill: teacher = teacher_mix x private model + (1 - teacher_mix) x global model


@dataclass
class FedProxConfig:
    mu: float = 0.01


@dataclass
class FewFedWeightConfig:
    energy_temperature: float = 1.0
    pseudo_samples: int = 6  # local instructions answered by the global model per client and round


@dataclass
class CenITConfig:
    budget_multiplier: int = 1  # x (num_clients * local budget) per round; the journal trains 10x epochs


@dataclass
class FlowerConfig:
    """Only for runs on Flower (``fedpit flower ...``); the in-process runner ignores this section."""

    wait_for_nodes_s: float = 120.0  # at start: wait this long for partition.num_clients nodes to connect
    round_timeout_s: float = 900.0  # a sampled node that has not replied by then is recorded as dropped
    min_replies: int = 1  # a round with fewer successful replies fails the run (it can be resumed)


@dataclass
class DPConfig:
    """The [dp] section: differential privacy. ``algorithm = "fedit-dp"`` trains each client with DP-SGD through
    Opacus (:mod:`fedpit.dp`: per-example clipping, Gaussian noise, Poisson-sampled batches, Opacus' RDP accountant);
    the ``server_*`` keys are Flower's server-side clipping of whole client updates (Flower runs only)."""

    noise_multiplier: float = 1.0  # fedit-dp: noise std / max_grad_norm (0: no noise, epsilon infinite)
    max_grad_norm: float = 1.0  # fedit-dp: each example's gradient is clipped to this L2 norm
    batch_size: int = 32  # fedit-dp: expected (Poisson) batch of a step; sample rate = batch_size / client examples
    delta: float = 1e-5  # fedit-dp: the delta of each client's (epsilon, delta) guarantee
    target_epsilon: float = 0.0  # > 0 (with noise_multiplier = 0): each client's noise is picked for this epsilon
    server_noise_multiplier: float = 0.0  # Flower: > 0 with server_clipping_norm > 0: server-side fixed-clipping DP
    server_clipping_norm: float = 0.0  # Flower: each client's update is clipped to this norm (0 = no server DP)


@dataclass
class PrivacyConfig:
    """The [privacy] section: what ``fedpit audit`` measures with (:mod:`fedpit.audit`). At the defaults a run
    trains on exactly the data it trained on before this section existed."""

    holdout: float = 0.0  # share of data.train held out of training as MIA non-members (seeded split; 0 = no MIA)
    canaries: int = 0  # canaries put into the clients' data (canary i into client i mod partition.num_clients)
    canary_repeats: int = 1  # copies of each canary in its client's data
    canary_digits: int = 4  # digits of each secret: exposure ranks it among all 10^digits (1-6; 5 costs 10x the trie)
    bootstrap: int = 1000  # resamples behind each 95% interval the audit reports
    audit_batch_size: int = 32  # examples per forward pass of the audit's losses and extraction attack
    trie_batch_size: int = 128  # secrets per forward pass of the canary digit trie (bounds its KV-cache memory)


@dataclass
class Config:
    algorithm: str = "fedpit"
    seed: int = 42
    output_dir: str = "runs"
    run_name: str = ""  # default: <timestamp>-<algorithm>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    selfgen: SelfGenSettings = field(default_factory=SelfGenSettings)
    fedpit: FedPITConfig = field(default_factory=FedPITConfig)
    fedprox: FedProxConfig = field(default_factory=FedProxConfig)
    fewfedweight: FewFedWeightConfig = field(default_factory=FewFedWeightConfig)
    cenit: CenITConfig = field(default_factory=CenITConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        validate(self)
        return self


def _sections(cfg) -> dict[str, Any]:
    return {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))
    }


def valid_keys(cfg: Config | None = None) -> list[str]:
    cfg = cfg or Config()
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML value or a --set string to the field's type."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str) and not _utf8_ok(text):
            raise ConfigError(f"{key}: not valid Unicode text (a lone surrogate; e.g. a path that is not UTF-8)")
    origin = typing.get_origin(tp)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected text, got {value!r}")
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field_types(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


RENAMED = {  # keys that moved: older run folders' config.toml still load
    "flower.dp_noise_multiplier": "dp.server_noise_multiplier",
    "flower.dp_clipping_norm": "dp.server_clipping_norm",
}


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.name`` (or a top-level ``name``) on ``cfg``, coercing the value; unknown keys are errors."""
    key = RENAMED.get(key, key)
    parts = key.split(".")
    target = cfg
    if len(parts) == 2 and parts[0] in _sections(cfg):
        target = getattr(cfg, parts[0])
    elif len(parts) != 1 or parts[0] in _sections(cfg):
        target = None
    name = parts[-1]
    types = _field_types(target) if target is not None else {}
    if name not in types:
        raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(valid_keys(cfg))}")
    setattr(target, name, _coerce(value, types[name], key))


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            items += _flatten(v, key + ".")
        else:
            items.append((key, v))
    return items


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file, then ``key=value`` overrides; validated."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from None
        for key, value in _flatten(data):
            try:
                set_value(cfg, key, value)
            except ConfigError as e:
                raise ConfigError(f"{p}: {e}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg.validate()


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    for key, value in _flatten(data):
        set_value(cfg, key, value)
    return cfg.validate()


def to_toml(cfg: Config) -> str:
    """Render a config as TOML (round-trips through :func:`load_config`)."""

    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")  # JSON's escapes are TOML's
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines, tables = [], []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            tables.append(f"\n[{f.name}]")
            tables += [f"{g.name} = {fmt(getattr(v, g.name))}" for g in dataclasses.fields(v)]
        else:
            lines.append(f"{f.name} = {fmt(v)}")
    return "\n".join(lines + tables) + "\n"


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _run_name(cfg: Config) -> None:
    n = cfg.run_name
    _check(
        n == "" or (n not in (".", "..") and not any(c in n for c in "/\\") and n.isprintable() and n == n.strip()),
        "run_name",
        f"{n!r} is not a plain folder name (no / or \\, not . or .., no control characters or outer spaces); "
        "use output_dir for where runs go",
    )


def _model(cfg: Config) -> None:
    m = cfg.model
    _check(m.template in ("alpaca", "chat"), "model.template", "must be alpaca or chat")
    _check(
        m.dtype in ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"),
        "model.dtype",
        f"'{m.dtype}' is not one of auto, bf16, fp16, fp32",
    )
    _check(m.max_seq_len >= 16, "model.max_seq_len", "must be at least 16")


def _data(cfg: Config) -> None:
    d = cfg.data
    _check(bool(d.train), "data.train", "must name a dataset ('demo', a file, or hf:NAME)")
    _check(
        d.format in ("auto", "alpaca", "jsonl", "medinstruct", "hf"),
        "data.format",
        "must be auto, alpaca, jsonl, medinstruct or hf",
    )
    _check(d.on_duplicate in ("error", "drop"), "data.on_duplicate", "must be error or drop")
    _check(d.limit >= 0, "data.limit", "must be >= 0")


def _partition(cfg: Config) -> None:
    p = cfg.partition
    _check(p.method in ("dirichlet", "iid"), "partition.method", "must be dirichlet or iid")
    _check(p.num_clients >= 1, "partition.num_clients", "must be >= 1")
    _check(math.isfinite(p.alpha) and p.alpha > 0, "partition.alpha", "must be a positive finite number")
    _check(p.label in ("auto", "category", "kmeans"), "partition.label", "must be auto, category or kmeans")
    _check(p.num_clusters >= 1, "partition.num_clusters", "must be >= 1")
    _check(p.min_per_client >= 1, "partition.min_per_client", "must be >= 1")


def _lora(cfg: Config) -> None:
    lo = cfg.lora
    _check(lo.r >= 1, "lora.r", "must be >= 1")
    _check(lo.alpha >= 1, "lora.alpha", "must be >= 1")
    _check(0.0 <= lo.dropout < 1.0, "lora.dropout", "must be in [0, 1)")
    _check(len(lo.target_modules) > 0, "lora.target_modules", "must name at least one module")


def _train(cfg: Config) -> None:
    t = cfg.train
    _check(t.local_epochs >= 1 or t.local_steps >= 1, "train.local_epochs", "set local_epochs or local_steps >= 1")
    _check(t.local_steps >= 0, "train.local_steps", "must be >= 0")
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    _check(t.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    _check(t.lr > 0 and math.isfinite(t.lr), "train.lr", "must be positive")
    _check(0 <= t.lr_min <= t.lr, "train.lr_min", "must be between 0 and train.lr")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")


def _federation(cfg: Config) -> None:
    f, n = cfg.federation, cfg.partition.num_clients
    _check(f.rounds >= 1, "federation.rounds", "must be >= 1")
    _check(0 < f.fraction <= 1, "federation.fraction", "must be in (0, 1]")
    _check(1 <= f.min_clients <= n, "federation.min_clients", f"must be between 1 and partition.num_clients ({n})")
    _check(0.0 <= f.server_lr <= 1.0, "federation.server_lr", "must be in [0, 1] (1.0: plain FedAvg)")


def _eval(cfg: Config) -> None:
    _check(cfg.eval.max_examples >= 0, "eval.max_examples", "must be >= 0")
    _check(cfg.eval.extraction_n >= 0, "eval.extraction_n", "must be >= 0 (0 = all)")
    _check(cfg.eval.extraction_max_new_tokens >= 1, "eval.extraction_max_new_tokens", "must be >= 1")


def _selfgen(cfg: Config) -> None:
    g = cfg.selfgen
    _check(g.num_instructions >= 0, "selfgen.num_instructions", "must be >= 0")
    _check(g.demos >= 1, "selfgen.demos", "must be >= 1")
    _check(g.response_demos >= 0, "selfgen.response_demos", "must be >= 0")
    _check(g.max_instruction_tokens >= 1, "selfgen.max_instruction_tokens", "must be >= 1")
    _check(g.max_response_tokens >= 1, "selfgen.max_response_tokens", "must be >= 1")
    _check(g.repetition_penalty >= 1.0, "selfgen.repetition_penalty", "must be >= 1.0 (1.0 turns it off)")
    _check(0.0 <= g.rouge_threshold <= 1.0, "selfgen.rouge_threshold", "must be in [0, 1]")
    _check(g.max_attempts >= 1, "selfgen.max_attempts", "must be >= 1")
    _check(1 <= g.min_words <= g.max_words, "selfgen.min_words", "must be >= 1 and <= selfgen.max_words")
    _check(g.batch_size >= 1, "selfgen.batch_size", "must be >= 1")
    _check(g.task_text in TASK_TEXTS, "selfgen.task_text", f"must be one of {', '.join(TASK_TEXTS)}")
    _check(0 < g.temperature and 0 < g.top_p <= 1, "selfgen.temperature", "temperature > 0 and top_p in (0, 1]")
    _check(g.template in GEN_TEMPLATES, "selfgen.template", f"must be one of {', '.join(GEN_TEMPLATES)}")
    _check(g.responder in RESPONDERS, "selfgen.responder", f"must be one of {', '.join(RESPONDERS)}")
    _check(g.public_pick in PUBLIC_PICKS, "selfgen.public_pick", f"must be one of {', '.join(PUBLIC_PICKS)}")
    _needs_private_model(cfg, "selfgen.responder", g.responder, "shared")


def _needs_private_model(cfg: Config, key: str, value: str, off: str) -> None:
    """A teacher setting other than ``off`` needs a method whose clients keep a private model to teach with."""
    _check(
        value == off or cfg.algorithm in PRIVATE_MODEL_METHODS,
        key,
        f"{value} needs a method whose clients keep a private model to teach with "
        f"({', '.join(PRIVATE_MODEL_METHODS)}); {cfg.algorithm} has none",
    )


def _methods(cfg: Config) -> None:
    """The method-specific sections (the algorithm's name is checked where methods are looked up)."""
    _check(bool(cfg.algorithm.strip()), "algorithm", "must name a method")
    _check(0.0 <= cfg.fedpit.beta <= 1.0, "fedpit.beta", "must be in [0, 1]")
    _check(cfg.fedpit.candidates >= 1, "fedpit.candidates", "must be >= 1")
    _check(1 <= cfg.fedpit.keep <= cfg.fedpit.candidates, "fedpit.keep", "must be between 1 and fedpit.candidates")
    _check(cfg.fedpit.synthetic_epochs >= 1, "fedpit.synthetic_epochs", "must be >= 1")
    for key in ("select_by", "mix_select_by"):
        _check(getattr(cfg.fedpit, key) in SELECT_BY, f"fedpit.{key}", f"must be one of {', '.join(SELECT_BY)}")
    _check(
        cfg.fedpit.shared_budget in ("synthetic_epochs", "parity"),
        "fedpit.shared_budget",
        "must be synthetic_epochs or parity",
    )
    _check(cfg.fedpit.personal in PERSONAL, "fedpit.personal", f"must be one of {', '.join(PERSONAL)}")
    _check(
        cfg.fedpit.personal != "stacked" or cfg.algorithm == "fedpit",
        "fedpit.personal",
        f"stacked applies to fedpit only: {cfg.algorithm} keeps no private adapter on top of a shared one "
        "(leave fedpit.personal = independent)",
    )
    p = cfg.fedpit
    _check(p.shared_target in SHARED_TARGETS, "fedpit.shared_target", f"must be one of {', '.join(SHARED_TARGETS)}")
    _needs_private_model(cfg, "fedpit.shared_target", p.shared_target, "text")
    for key in ("distill_weight", "teacher_mix"):
        _check(0.0 <= getattr(p, key) <= 1.0, f"fedpit.{key}", "must be in [0, 1]")
    _check(
        math.isfinite(p.distill_temperature) and p.distill_temperature > 0, "fedpit.distill_temperature", "must be > 0"
    )
    _check(cfg.fedprox.mu >= 0, "fedprox.mu", "must be >= 0")
    _check(cfg.fewfedweight.energy_temperature > 0, "fewfedweight.energy_temperature", "must be > 0")
    _check(cfg.fewfedweight.pseudo_samples >= 0, "fewfedweight.pseudo_samples", "must be >= 0")
    _check(cfg.cenit.budget_multiplier >= 1, "cenit.budget_multiplier", "must be >= 1")


def _flower(cfg: Config) -> None:
    fl, n = cfg.flower, cfg.partition.num_clients
    _check(fl.wait_for_nodes_s >= 0, "flower.wait_for_nodes_s", "must be >= 0")
    _check(fl.round_timeout_s > 0, "flower.round_timeout_s", "must be > 0")
    _check(1 <= fl.min_replies <= n, "flower.min_replies", f"must be between 1 and partition.num_clients ({n})")


def _dp(cfg: Config) -> None:
    d, finite = cfg.dp, math.isfinite
    _check(finite(d.noise_multiplier) and d.noise_multiplier >= 0, "dp.noise_multiplier", "must be >= 0 (0: no noise)")
    _check(finite(d.max_grad_norm) and d.max_grad_norm > 0, "dp.max_grad_norm", "must be a positive number")
    _check(d.batch_size >= 1, "dp.batch_size", "must be >= 1")
    _check(0 < d.delta < 1, "dp.delta", "must be in (0, 1), e.g. 1e-5 (below 1 / the client's examples)")
    _check(finite(d.target_epsilon) and d.target_epsilon >= 0, "dp.target_epsilon", "must be >= 0 (0: not used)")
    _check(
        d.target_epsilon == 0 or d.noise_multiplier == 0,
        "dp.target_epsilon",
        f"picks the noise multiplier itself: set dp.noise_multiplier = 0 with it (it is {d.noise_multiplier}), "
        "or leave dp.target_epsilon = 0",
    )
    server_noise = d.server_noise_multiplier
    _check(finite(server_noise) and server_noise >= 0, "dp.server_noise_multiplier", "must be >= 0")
    _check(
        finite(d.server_clipping_norm) and d.server_clipping_norm >= 0,
        "dp.server_clipping_norm",
        "must be >= 0 (0 = no server-side DP)",
    )
    _check(
        d.server_noise_multiplier == 0 or d.server_clipping_norm > 0,
        "dp.server_noise_multiplier",
        "needs dp.server_clipping_norm > 0",
    )


def _privacy(cfg: Config) -> None:
    pv = cfg.privacy
    _check(0.0 <= pv.holdout < 1.0, "privacy.holdout", "must be in [0, 1) (0 = no membership inference)")
    _check(pv.canaries >= 0, "privacy.canaries", "must be >= 0 (0 = no canaries)")
    _check(1 <= pv.canary_repeats <= 1000, "privacy.canary_repeats", "must be between 1 and 1000")
    _check(1 <= pv.canary_digits <= 6, "privacy.canary_digits", "must be between 1 and 6")
    _check(
        pv.canaries <= 10**pv.canary_digits,
        "privacy.canaries",
        f"no room for {pv.canaries} distinct secrets of privacy.canary_digits = {pv.canary_digits} digits "
        f"({10**pv.canary_digits} exist)",
    )
    _check(100 <= pv.bootstrap <= 10**6, "privacy.bootstrap", "must be between 100 and 1000000")
    _check(pv.audit_batch_size >= 1, "privacy.audit_batch_size", "must be >= 1")
    _check(pv.trie_batch_size >= 1, "privacy.trie_batch_size", "must be >= 1")


SECTION_CHECKS = (
    _run_name,
    _model,
    _data,
    _partition,
    _lora,
    _train,
    _federation,
    _eval,
    _selfgen,
    _methods,
    _flower,
    _dp,
    _privacy,
)


def validate(cfg: Config) -> None:
    """Check every section (first error wins, as a one-line ``ConfigError`` naming the key)."""
    for check in SECTION_CHECKS:
        check(cfg)
