"""The training engine: one backbone with one LoRA wrapper, loaded once per process.

Clients and rounds swap adapter *weights* into the same peft model instead of rebuilding it, and each example is
tokenized once per run. Algorithms call :meth:`Engine.train` and :meth:`Engine.loss`; they exchange plain state dicts.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .adapter_folder import SHARED
from .adapters import StateDict, clone_state
from .backbone import Backbone
from .config import LoraConfig
from .prompts import IGNORE_INDEX, Encoded, encode_example

log = logging.getLogger("fedpit.engine")


@dataclass
class TrainStats:
    steps: int = 0
    examples_seen: int = 0  # examples processed (with repeats)
    tokens: int = 0  # real (non-padding) tokens processed
    target_tokens: int = 0  # response tokens the loss is computed on
    loss: float = float("nan")  # token-weighted mean over the whole update
    loss_first: float = float("nan")  # first optimizer step
    loss_last: float = float("nan")  # last optimizer step
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def cosine_lr(round_idx: int, num_rounds: int, lr0: float, lr_min: float) -> float:
    """lr_r = lr_min + 0.5 (lr_0 - lr_min)(1 + cos(pi r / R)), r counted from 0 (round 1 trains at lr_0)."""
    return lr_min + 0.5 * (lr0 - lr_min) * (1.0 + math.cos(math.pi * round_idx / max(1, num_rounds)))


def make_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, group_by_length: bool = True
) -> list[list[int]]:
    """Shuffle, then (optionally) sort within windows of 16 batches by length so batches carry little padding."""
    order = rng.permutation(len(lengths)).tolist()
    if group_by_length:
        window = batch_size * 16
        order = [
            i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lambda j: -lengths[j])
        ]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    perm = rng.permutation(len(batches)).tolist()
    return [batches[i] for i in perm]


def micro_batch_stream(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, group_by_length: bool = True
) -> Iterator[list[int]]:
    """:func:`make_batches` epoch after epoch, endlessly (a fixed step budget cycles over the data)."""
    while True:
        yield from make_batches(lengths, batch_size, rng, group_by_length)


def _optimizer_step(
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    extra_loss: Callable[[], torch.Tensor] | None,
    max_grad_norm: float,
) -> None:
    """Add the extra loss's gradient (FedProx), clip, step, and clear the gradients."""
    if extra_loss is not None:
        extra_loss().backward()
    if max_grad_norm and max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)


TEACHER_PRIVATE, TEACHER_BASE, TEACHER_GLOBAL = "teacher", "teacher_base", "teacher_global"  # distillation slots


@dataclass(frozen=True)
class Teacher:
    """Token-level teaching of the adapter :meth:`Engine.train` trains (the student): its loss per response token
    becomes ``weight`` x cross-entropy + (1 - ``weight``) x T^2 x KL(p_teacher || p_student), both distributions
    softmaxes at temperature T = ``temperature``, and p_teacher = ``mix`` x p_private + (1 - ``mix``) x p_global: a
    mixture of the *probabilities* of two frozen models, the client's private model (``private``, stacked on
    ``private_base`` where it is a stacked private adapter) and the global model the round started from
    (``global_state``). The teacher's logits are computed per micro-batch from extra peft adapter slots of the one
    model, never stored (a 49,152-word vocabulary costs ~197 KB per token)."""

    private: StateDict
    global_state: StateDict
    mix: float = 1.0
    weight: float = 0.5
    temperature: float = 1.0
    private_base: StateDict | None = None

    @property
    def private_slots(self) -> list[str]:
        return [TEACHER_PRIVATE] + ([TEACHER_BASE] if self.private_base is not None else [])


def distill_token_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(p_teacher || softmax(student / T)) per position (rows), in nats."""
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    kl = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_q).sum(dim=-1)
    return temperature**2 * kl


class Engine:
    def __init__(
        self, backbone: Backbone, lora: LoraConfig, *, template: str = "alpaca", max_seq_len: int = 512, seed: int = 0
    ):
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.device = backbone.device
        self.template = template
        self.max_seq_len = max_seq_len
        self.lora = lora
        torch.manual_seed(seed)  # LoRA A init
        self.peft_config = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(backbone.model, self.peft_config)
        self.initial_adapter = self.adapter_state()
        self._encoded: dict[object, Encoded | None] = {}
        self._warned_cut = False
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.grad_sample_module = None  # fedpit.dp: Opacus' per-sample-gradient hooks, attached once on first use

    # ----------------------------------------------------------------------------- adapter weights
    def adapter_state(self) -> StateDict:
        from peft import get_peft_model_state_dict

        return clone_state(get_peft_model_state_dict(self.model))

    def peft_config_dict(self) -> dict:
        """``adapter_config.json`` of this engine's adapters (what ``PeftModel.from_pretrained`` reads)."""
        d = self.peft_config.to_dict()
        d = {k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}
        d["base_model_name_or_path"] = self.backbone.path
        return d

    def load_adapter(self, state: StateDict) -> None:
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(self.model, state)
        unexpected = getattr(res, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"adapter has keys this model lacks, e.g. {unexpected[:2]}")

    @contextlib.contextmanager
    def stacked(self, shared: StateDict | None) -> Iterator[None]:
        """Within: the model is backbone + ``shared`` (frozen) + the loaded adapter, the one :meth:`load_adapter`,
        :meth:`adapter_state` and :meth:`train` address (FedDPA's stack of a global and a private LoRA adapter).

        peft's multi-adapter support does the stacking: ``shared`` goes into a second adapter slot, named
        :data:`~fedpit.adapter_folder.SHARED` (no dropout: it is part of the frozen model), both are activated with
        ``set_adapter([...])`` and only the private one keeps gradients. The slot is created on first use; outside
        this block only the loaded adapter is active and trainable, exactly as before. ``None``: nothing is stacked
        (the block changes nothing).
        """
        if shared is None:
            yield
            return
        self._frozen_slot(SHARED, shared)
        self.model.base_model.set_adapter(["default", SHARED])
        self.model.set_requires_grad(SHARED, requires_grad=False)
        try:
            yield
        finally:
            self.model.base_model.set_adapter("default")

    def _frozen_slot(self, name: str, state: StateDict) -> None:
        """Load ``state`` into the peft adapter slot ``name`` (created on first use, without dropout and without
        moving the run's RNG); the slot is frozen and inactive until a caller activates it."""
        from peft import set_peft_model_state_dict

        if name not in self.model.peft_config:
            slot = copy.deepcopy(self.peft_config)
            slot.lora_dropout = 0.0
            with torch.random.fork_rng(devices=[]):  # the slot's random init must not move the run's RNG
                self.model.add_adapter(name, slot)
        res = set_peft_model_state_dict(self.model, state, adapter_name=name)
        if getattr(res, "unexpected_keys", None):
            raise ValueError(f"{name} adapter has keys this model lacks, e.g. {res.unexpected_keys[:2]}")
        self.model.set_requires_grad(name, requires_grad=False)

    def _load_teacher(self, teacher: Teacher | None) -> None:
        """Put a distillation teacher's frozen adapters into their slots (nothing for plain training)."""
        if teacher is None or teacher.weight == 1.0:
            return
        self._frozen_slot(TEACHER_PRIVATE, teacher.private)
        if teacher.private_base is not None:
            self._frozen_slot(TEACHER_BASE, teacher.private_base)
        self._frozen_slot(TEACHER_GLOBAL, teacher.global_state)
        self.model.base_model.set_adapter("default")  # the student alone is active and trainable

    @torch.no_grad()
    def _teacher_probs(self, teacher: Teacher, ids, labels, mask) -> torch.Tensor:
        """The teacher's next-token distribution at each response position (:class:`Teacher`), from its frozen
        slots; the loaded (student) adapter is the active one again afterwards."""
        t = teacher.temperature
        probs = torch.zeros(())
        parts = [(teacher.mix, teacher.private_slots), (1.0 - teacher.mix, [TEACHER_GLOBAL])]
        training = self.model.training
        self.model.eval()  # a frozen model: no dropout of the backbone's (the teacher slots have none)
        try:
            for share, slots in parts:
                if share > 0:
                    self.model.base_model.set_adapter(slots)
                    logits, _, _ = self._target_logits(ids, labels, mask)
                    probs = probs + share * torch.softmax(logits / t, dim=-1)
        finally:
            self.model.base_model.set_adapter("default")
            self.model.train(training)
        return probs

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ----------------------------------------------------------------------------- data
    def encode(self, examples: Sequence) -> list[Encoded]:
        """Tokenize (cached per example for the whole run); examples whose response cannot fit are dropped.

        The first call that meets examples longer than ``max_seq_len`` warns once, with their count and the longest
        length: they are cut to fit, silently otherwise."""
        out, cut = [], []
        for ex in examples:
            if ex not in self._encoded:
                self._encoded[ex] = enc = encode_example(
                    self.tokenizer, ex, template=self.template, max_len=self.max_seq_len
                )
                if enc is not None and enc.full_length:
                    cut.append(enc.full_length)
            if self._encoded[ex] is not None:
                out.append(self._encoded[ex])
        if cut and not self._warned_cut:
            self._warned_cut = True
            log.warning(
                "%d of %d examples are longer than model.max_seq_len = %d tokens and were cut to fit (the "
                "longest has %d tokens); raise model.max_seq_len to keep more of them (warned once)",
                len(cut),
                len(examples),
                self.max_seq_len,
                max(cut),
            )
        return out

    def _collate(self, items: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, e in enumerate(items):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            mask[i, :n] = 1
        return ids.to(self.device), labels.to(self.device), mask.to(self.device)

    # ----------------------------------------------------------------------------- loss
    def _target_logits(self, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
        """Logits at response positions only, their targets, and each position's row index.

        The LM head (vocab x hidden, the costliest single matmul of a small model) runs only on those positions.
        """
        base = self.model.get_base_model()
        decoder = getattr(base, base.base_model_prefix, None)
        head = base.get_output_embeddings()
        targets = labels[:, 1:]
        sel = targets != IGNORE_INDEX
        rows = sel.nonzero()[:, 0]
        if decoder is not None and head is not None and not getattr(base.config, "final_logit_softcapping", None):
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
            logits = head(hidden[sel])
        else:  # generic path for architectures with extra logit processing
            logits = base(input_ids=ids, attention_mask=mask).logits[:, :-1][sel]
        return logits.float(), targets[sel], rows

    def _token_losses(
        self, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-target-token cross-entropy and each token's row index."""
        logits, targets, rows = self._target_logits(ids, labels, mask)
        return F.cross_entropy(logits, targets, reduction="none"), rows

    def per_example_loss(self, items: Sequence[Encoded]) -> torch.Tensor:
        """Each example's own mean response-token loss, differentiable (DP-SGD: an example's gradient must not
        depend on the other examples of its batch, as it does through the step's token count in :meth:`train`)."""
        tok_loss, rows = self._token_losses(*self._collate(items))
        sums = torch.zeros(len(items), dtype=tok_loss.dtype, device=tok_loss.device).index_add(0, rows, tok_loss)
        return sums / torch.bincount(rows, minlength=len(items)).clamp(min=1).to(tok_loss.dtype)

    @staticmethod
    def _per_row_mean(values: torch.Tensor, rows: torch.Tensor, n: int) -> list[float]:
        sums = torch.zeros(n, dtype=torch.float64).index_add_(0, rows.cpu(), values.detach().cpu().double())
        counts = torch.bincount(rows.cpu(), minlength=n)
        return [float(sums[j] / counts[j]) if counts[j] else float("nan") for j in range(n)]

    @torch.no_grad()
    def energies(self, encoded: Sequence[Encoded], temperature: float = 1.0, batch_size: int = 8) -> list[float]:
        """Free energy E = -T logsumexp(logits / T) averaged over each example's response tokens (lower: the model
        is more confident, the FewFedWeight sample-quality signal)."""
        self.model.eval()
        out = [float("nan")] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            logits, _, rows = self._target_logits(*self._collate([encoded[i] for i in idx]))
            e = -temperature * torch.logsumexp(logits / temperature, dim=-1)
            for j, v in zip(idx, self._per_row_mean(e, rows, len(idx))):
                out[j] = v
        return out

    def proximal_term(self, reference: StateDict, mu: float) -> Callable[[], torch.Tensor]:
        """FedProx: a closure returning mu/2 * ||w - w_ref||^2 over the trainable LoRA weights."""
        pairs = []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                key = name.replace(f".{self.model.active_adapter}.", ".")
                pairs.append((p, reference[key].to(p.device, p.dtype)))

        def term() -> torch.Tensor:
            return 0.5 * mu * sum(((p - ref) ** 2).sum() for p, ref in pairs)

        return term

    @torch.no_grad()
    def example_losses(self, encoded: Sequence[Encoded], batch_size: int = 8) -> list[float]:
        """Mean response-token loss of each example (adapter as loaded, no dropout)."""
        self.model.eval()
        out = [float("nan")] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            tok_loss, rows = self._token_losses(*self._collate([encoded[i] for i in idx]))
            for j, v in zip(idx, self._per_row_mean(tok_loss, rows, len(idx))):
                out[j] = v
        return out

    @torch.no_grad()
    def mean_loss(self, encoded: Sequence[Encoded], batch_size: int = 8) -> float:
        """Token-weighted mean response loss over a set (the held-out loss reported per round)."""
        if not encoded:
            return float("nan")
        self.model.eval()
        total, count = 0.0, 0
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
        for s in range(0, len(order), batch_size):
            tok_loss, _ = self._token_losses(*self._collate([encoded[i] for i in order[s : s + batch_size]]))
            total += float(tok_loss.sum())
            count += tok_loss.numel()
        return total / max(1, count)

    # ----------------------------------------------------------------------------- training
    def _weighted(self, examples: Sequence, weights: Sequence[float] | None) -> tuple[list[Encoded], torch.Tensor]:
        """The examples that fit, encoded, and their weights (1 each by default)."""
        weights = [1.0] * len(examples) if weights is None else list(weights)
        if len(weights) != len(examples):
            raise ValueError(f"{len(weights)} weights for {len(examples)} examples")
        pairs = [(e, w) for e, w in zip((self.encode([ex]) for ex in examples), weights) if e]
        return [e[0] for e, _ in pairs], torch.tensor([w for _, w in pairs], dtype=torch.float32)

    def _accumulate(
        self,
        encoded: Sequence[Encoded],
        group: list[list[int]],
        sample_w: torch.Tensor,
        n_target: int,
        stats: TrainStats,
        teacher: Teacher | None = None,
    ) -> float:
        """Backward over one optimizer step's micro-batches (gradients accumulate); the step's summed token loss."""
        step_loss = 0.0
        for idx in group:
            mb = [encoded[i] for i in idx]
            ids, labels, mask = self._collate(mb)
            if teacher is None or teacher.weight == 1.0:
                tok_loss, rows = self._token_losses(ids, labels, mask)
                objective = tok_loss
            else:
                probs = self._teacher_probs(teacher, ids, labels, mask)
                logits, targets, rows = self._target_logits(ids, labels, mask)
                tok_loss = F.cross_entropy(logits, targets, reduction="none")
                kl = distill_token_loss(logits, probs, teacher.temperature)
                objective = teacher.weight * tok_loss + (1.0 - teacher.weight) * kl
            w = sample_w[idx].to(tok_loss.device)[rows]
            ((objective * w).sum() / n_target).backward()
            step_loss += float(tok_loss.detach().sum())
            stats.tokens += int(mask.sum())
            stats.examples_seen += len(mb)
        return step_loss

    def train(
        self,
        examples: Sequence,
        *,
        lr: float,
        epochs: int = 1,
        steps: int = 0,
        batch_size: int = 4,
        grad_accum: int = 1,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        seed: int = 0,
        group_by_length: bool = True,
        on_step: Callable[[int, int, float], None] | None = None,
        extra_loss: Callable[[], torch.Tensor] | None = None,
        weights: Sequence[float] | None = None,
        teacher: Teacher | None = None,
    ) -> TrainStats:
        """Train the currently loaded adapter in place with AdamW at a constant ``lr``.

        ``steps`` > 0 fixes the number of optimizer steps (cycling over the data), else ``epochs`` passes are made.
        All randomness (order, LoRA dropout) comes from ``seed``, so the same call gives the same adapter.
        ``extra_loss`` (e.g. a FedProx proximal term) is added once per optimizer step. ``weights`` (one per example)
        scale each example's token losses (FewFedWeight's pseudo-sample weights). ``teacher``: distillation from
        frozen models (:class:`Teacher`; weight 1 is plain training, bit for bit); losses reported are cross-entropy.
        """
        encoded, sample_w = self._weighted(examples, weights)
        stats = TrainStats()
        if not encoded:
            return stats
        self._load_teacher(teacher)
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        params = self.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        lengths = [len(e.input_ids) for e in encoded]
        micro_per_epoch = math.ceil(len(encoded) / batch_size)
        total_steps = steps if steps > 0 else max(1, math.ceil(epochs * micro_per_epoch / grad_accum))
        stream = micro_batch_stream(lengths, batch_size, rng, group_by_length)
        self.model.train()
        loss_sum, tok_sum = 0.0, 0
        for step in range(total_steps):
            group = [next(stream) for _ in range(grad_accum)]
            n_target = sum(encoded[i].num_target_tokens for mb in group for i in mb)
            step_loss = self._accumulate(encoded, group, sample_w, n_target, stats, teacher)
            _optimizer_step(opt, params, extra_loss, max_grad_norm)
            loss_sum += step_loss
            tok_sum += n_target
            if step == 0:
                stats.loss_first = step_loss / n_target
            stats.loss_last = step_loss / n_target
            stats.steps += 1
            if on_step is not None:
                on_step(step + 1, total_steps, stats.loss_last)
        self.model.eval()
        stats.target_tokens = tok_sum
        stats.loss = loss_sum / max(1, tok_sum)
        stats.seconds = time.perf_counter() - t0
        return stats
