"""Differentially private local training: DP-SGD through Opacus, for ``algorithm = "fedit-dp"``.

Each sampled client trains the global adapter with DP-SGD (Abadi et al. 2016) as Opacus implements it, on the
engine's one peft model:

- **Poisson sampling.** Every step draws each of the client's examples independently with probability
  q = ``dp.batch_size`` / examples (Opacus' ``UniformWithReplacementSampler``): a batch has a random size, possibly
  0, as the accountant assumes. The engine's fixed, length-grouped batches are not used. A drawn batch is cut into
  physical micro-batches of ``train.batch_size`` for memory only; they make one optimizer step, as Opacus'
  ``BatchMemoryManager`` does (``DPOptimizer.signal_skip_step``). An empty draw still takes a noised step.
- **Per-example loss.** Each example's loss is its own mean over its response tokens
  (:meth:`Engine.per_example_loss`), summed over the batch, so an example's gradient does not depend on the others.
- **Per-example gradients.** Opacus' ``GradSampleModule`` hooks the peft model's trainable LoRA layers once per
  engine (:attr:`Engine.grad_sample_module`; Opacus refuses a second set) and they are enabled only inside
  :func:`train_private`. Clients swap adapter weights into the same parameters, so the hooks keep seeing them.
- **Clipping and noise.** Opacus' ``DPOptimizer`` around AdamW clips each example's gradient to ``dp.max_grad_norm``,
  adds N(0, (noise multiplier x ``dp.max_grad_norm``)^2) to their sum and divides by the expected batch size. The
  engine's global clipping (``train.max_grad_norm``) is not applied.
- **Accounting.** Opacus' RDP accountant, stepped by the optimizer's own hook. Its history (noise multiplier, sample
  rate, steps) is kept in the client's state (``ClientState.accountant``), so a resumed run or a Flower site goes on
  from it; each client reports its epsilon at ``dp.delta`` after every round, and ``summary.json`` the largest.

``dp.target_epsilon`` > 0 picks each client's noise multiplier for the whole run with Opacus'
``get_noise_multiplier``, from the client's sample rate and its steps over ``federation.rounds`` rounds (a client
sampled in fewer rounds spends less).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import Config
from .errors import ConfigError

if TYPE_CHECKING:
    from .engine import Engine, TrainStats
    from .prompts import Encoded

log = logging.getLogger("fedpit.dp")
DP_METHODS = frozenset({"fedit-dp"})  # the methods that train with DP-SGD (checked by :func:`preflight`)
ACCOUNTANT = "rdp"  # Opacus' RDP accountant (its PRV accountant needs minutes, or more, at an epsilon of 1000)
History = list[tuple[float, float, int]]  # the accountant's (noise multiplier, sample rate, steps) entries


@dataclass(frozen=True)
class Schedule:
    """One client's DP-SGD in one round, from the config and its number of examples."""

    examples: int  # the client's examples (the sampled population)
    sample_rate: float  # q: each example's chance to be in a step's batch
    steps: int  # optimizer steps per round
    sigma: float  # noise multiplier (dp.noise_multiplier, or picked for dp.target_epsilon)
    expected_batch: int  # q x examples: what the summed gradient is divided by


def schedule(cfg: Config, examples: int) -> Schedule:
    """q = min(1, ``dp.batch_size`` / examples); ``train.local_steps`` steps a round (0: ``train.local_epochs``
    expected passes, ceil(epochs x examples / ``dp.batch_size``) steps); the noise multiplier as configured or
    picked for ``dp.target_epsilon`` over the steps of all ``federation.rounds`` rounds."""
    d, t = cfg.dp, cfg.train
    q = min(1.0, d.batch_size / examples)
    steps = t.local_steps if t.local_steps > 0 else max(1, math.ceil(t.local_epochs * examples / d.batch_size))
    sigma = d.noise_multiplier
    if d.target_epsilon > 0:
        sigma = noise_for_target(d.target_epsilon, d.delta, q, steps * cfg.federation.rounds)
    return Schedule(examples, q, steps, sigma, min(d.batch_size, examples))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Opacus' numerical warnings (an RDP order at the edge of its range, overflow in the PRV grid) stay out of the
    user's log: a result that is not a finite epsilon is an error of its own."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


@functools.lru_cache(maxsize=64)
def noise_for_target(target: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier whose epsilon after ``steps`` steps at ``sample_rate`` is at most ``target`` (and within
    0.5% of it): Opacus' ``get_noise_multiplier``."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet():
            sigma = get_noise_multiplier(
                target_epsilon=target,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=ACCOUNTANT,
                epsilon_tolerance=max(0.01, 0.005 * target),
            )
    except (ValueError, ArithmeticError, MemoryError) as e:
        raise ConfigError(
            f"dp.target_epsilon: {target:g} cannot be reached at dp.delta = {delta:g} with sample rate "
            f"{sample_rate:.4g} over {steps} steps (Opacus: {e})"
        ) from None
    return float(sigma)


def epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Opacus' RDP epsilon at ``delta`` after ``history``: 0 before any step, infinite once a step had no noise; a
    one-line ConfigError when Opacus cannot compute it."""
    if not any(n for _, _, n in history):
        return 0.0
    if any(sigma <= 0 for sigma, _, n in history if n):
        return math.inf
    from opacus.accountants import create_accountant

    accountant = create_accountant(ACCOUNTANT)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    why = ""
    try:
        with _quiet():
            eps = float(accountant.get_epsilon(delta=delta))
    except (ValueError, ArithmeticError, MemoryError) as e:
        eps, why = math.nan, f" (Opacus: {e})"
    if not math.isfinite(eps):
        steps = ", ".join(f"{n} steps at noise {s:.4g}, sample rate {q:.4g}" for s, q, n in history)
        raise ConfigError(f"dp: the epsilon of {steps} cannot be computed at dp.delta = {delta:g}{why}")
    return eps


def preflight(cfg: Config, sizes: Sequence[int]) -> None:
    """Before anything is written: each client's schedule and the epsilon it reaches after ``federation.rounds``
    rounds (a target that cannot be reached, an epsilon that cannot be computed: a one-line ConfigError). Nothing
    for methods without DP-SGD."""
    if cfg.algorithm not in DP_METHODS or not sizes:
        return
    d = cfg.dp
    if d.noise_multiplier == 0 and d.target_epsilon == 0:
        log.warning(
            "dp.noise_multiplier = 0: %s clips each example's gradient but adds no noise; its epsilon is infinite "
            "(no privacy guarantee)",
            cfg.algorithm,
        )
    for n in sorted(set(sizes)):
        plan = schedule(cfg, n)
        epsilon([(plan.sigma, plan.sample_rate, plan.steps * cfg.federation.rounds)], d.delta)
    if d.delta >= 1 / max(sizes):
        log.warning(
            "dp.delta = %g is not below 1 / a client's examples (%d): the guarantee is weak", d.delta, max(sizes)
        )


def grad_sample_module(engine: Engine):
    """Opacus' per-example-gradient hooks on the engine's peft model, attached on first use and cached on the engine
    (one set per model: clients swap adapter weights into the same parameters). Disabled outside
    :func:`train_private`."""
    if engine.grad_sample_module is None:
        from opacus import GradSampleModule

        try:
            gsm = GradSampleModule(engine.model, batch_first=True, loss_reduction="sum", strict=True)
        except (NotImplementedError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(
                f"lora.target_modules: Opacus cannot compute per-example gradients here: {first}"
            ) from None
        gsm.disable_hooks()
        engine.grad_sample_module = gsm
    return engine.grad_sample_module


def _reset_hooks(engine: Engine) -> None:
    """Drop what an interrupted step may have left in the hooked layers (activations, a batch length) and on the
    parameters (per-example gradients), so the next step starts clean."""
    for module in engine.model.modules():
        for attr in ("activations", "max_batch_len"):
            if hasattr(module, attr):
                delattr(module, attr)
    for p in engine.trainable_parameters():
        p.grad_sample = None
        if hasattr(p, "_current_grad_sample"):
            del p._current_grad_sample
        p._forward_counter = 0
        p.grad = None


def _generator(device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _backward(losses: torch.Tensor) -> None:
    with warnings.catch_warnings():  # the first LoRA layer's input needs no gradient; its hook fires on the output
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        losses.sum().backward()


def check_per_example(engine: Engine, n: int) -> None:
    """Every trainable LoRA matrix got one gradient per example of the micro-batch just back-propagated (a layer that
    does not see the batch first, such as ``lm_head`` on the selected response positions, or one Opacus cannot hook,
    such as an embedding's LoRA, would clip and count something other than examples)."""
    for name, p in engine.model.named_parameters():
        if not p.requires_grad:
            continue
        gs = p.grad_sample
        rows = None if gs is None else sum(g.shape[0] for g in gs) if isinstance(gs, list) else gs.shape[0]
        if rows != n:
            got = "none" if rows is None else f"{rows} rows for {n} examples"
            raise ConfigError(
                f"lora.target_modules: DP-SGD needs each example's gradient of every LoRA matrix, and Opacus gives "
                f"{got} for {name}; target only layers inside the decoder (e.g. q_proj, k_proj, v_proj, o_proj)"
            )


def dp_step(engine: Engine, opt, encoded: Sequence[Encoded], batch: list[int], micro: int, stats: TrainStats):
    """One DP-SGD step on a Poisson-drawn batch (indices into ``encoded``, possibly none): per-example gradients over
    physical micro-batches of ``micro``, then one clipped and noised optimizer step. Returns the batch's summed
    response-token loss and its response tokens."""
    order = sorted(batch, key=lambda i: -len(encoded[i].input_ids))  # a batch is a set: sorted, it pads less
    chunks = [order[s : s + micro] for s in range(0, len(order), micro)]
    if not chunks:  # an empty draw: no example, but the noise (and the accountant's step) all the same
        for p in opt.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    loss_sum, tokens = 0.0, 0
    for j, idx in enumerate(chunks):
        items = [encoded[i] for i in idx]
        losses = engine.per_example_loss(items)
        _backward(losses)
        check_per_example(engine, len(items))
        counts = torch.tensor([e.num_target_tokens for e in items], dtype=torch.float64)
        loss_sum += float((losses.detach().cpu().double() * counts).sum())
        tokens += int(counts.sum())
        stats.tokens += sum(len(e.input_ids) for e in items)
        stats.examples_seen += len(items)
        if j < len(chunks) - 1:  # clip and add up this micro-batch; the step comes after the last one
            opt.signal_skip_step(do_skip=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum, tokens


def _optimizer(engine: Engine, cfg: Config, plan: Schedule, lr: float, seed: int, history: History):
    """Opacus' DPOptimizer around AdamW, and the RDP accountant (continuing ``history``) it steps."""
    from opacus.accountants import create_accountant
    from opacus.optimizers import DPOptimizer

    params = engine.trainable_parameters()
    opt = DPOptimizer(
        torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.weight_decay),
        noise_multiplier=plan.sigma,
        max_grad_norm=cfg.dp.max_grad_norm,
        expected_batch_size=plan.expected_batch,
        loss_reduction="mean",
        generator=_generator(engine.device, seed + 1),
    )
    accountant = create_accountant(ACCOUNTANT)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    return opt, accountant


def train_private(
    engine: Engine,
    examples: Sequence,
    cfg: Config,
    *,
    lr: float,
    seed: int,
    history: Sequence[tuple[float, float, int]] = (),
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[TrainStats, History, Schedule | None]:
    """Train the loaded adapter in place with DP-SGD (see the module's docstring). Returns the training statistics,
    the accountant's history with this update added, and the schedule it ran (None: no example to train on)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from .engine import TrainStats

    encoded = engine.encode(examples)
    stats = TrainStats()
    if not encoded:
        return stats, list(history), None
    t0 = time.perf_counter()
    plan = schedule(cfg, len(encoded))
    gsm = grad_sample_module(engine)
    torch.manual_seed(seed)  # LoRA dropout
    opt, accountant = _optimizer(engine, cfg, plan, lr, seed, list(history))
    g = torch.Generator().manual_seed(seed)
    sampler = UniformWithReplacementSampler(
        num_samples=len(encoded), sample_rate=plan.sample_rate, generator=g, steps=plan.steps
    )
    loss_sum, tok_sum = 0.0, 0
    _reset_hooks(engine)
    gsm.enable_hooks()
    engine.model.train()
    try:
        for step, batch in enumerate(sampler):
            step_loss, n_tok = dp_step(engine, opt, encoded, batch, cfg.train.batch_size, stats)
            loss_sum, tok_sum = loss_sum + step_loss, tok_sum + n_tok
            stats.loss_last = step_loss / n_tok if n_tok else math.nan
            stats.loss_first = stats.loss_last if step == 0 else stats.loss_first
            stats.steps += 1
            if on_step is not None:
                on_step(step + 1, plan.steps, stats.loss_last)
    finally:
        gsm.disable_hooks()
        _reset_hooks(engine)
        engine.model.eval()
    stats.target_tokens = tok_sum
    stats.loss = loss_sum / max(1, tok_sum)
    stats.seconds = time.perf_counter() - t0
    return stats, list(accountant.history), plan


def client_metrics(cfg: Config, plan: Schedule | None, history: History) -> dict:
    """What a fedit-dp client reports each round: its epsilon so far (infinite without noise) and what it ran."""
    return {
        "dp_epsilon": epsilon(history, cfg.dp.delta),
        "dp_delta": cfg.dp.delta,
        "dp_noise_multiplier": plan.sigma if plan else 0.0,
        "dp_sample_rate": plan.sample_rate if plan else 0.0,
        "dp_steps": plan.steps if plan else 0,
        "dp_steps_total": sum(n for _, _, n in history),
    }


def run_summary(rows: Sequence[dict]) -> dict:
    """``summary.json``'s ``dp``: each client's epsilon after its last round and ``epsilon``, the largest (the run's
    guarantee for any one example). Read from the clients' metrics rows, so both runtimes and a resumed run agree;
    None (in JSON) is an infinite epsilon (no noise); empty for runs without DP-SGD."""
    last = {int(r["client"]): r for r in rows if r.get("kind") == "client" and "dp_sample_rate" in r}
    if not last:
        return {}
    eps = {k: math.inf if r.get("dp_epsilon") is None else float(r["dp_epsilon"]) for k, r in sorted(last.items())}
    return {
        "epsilon": max(eps.values()),
        "delta": next(iter(last.values())).get("dp_delta"),
        "accountant": ACCOUNTANT,
        "clients": {str(k): v for k, v in eps.items()},
    }
