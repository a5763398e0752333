"""Evaluate any model on a test set: answers, offline metrics, and (optionally) the pairwise LLM judge.

Models: a trained adapter folder (a run's ``final/``, a client's ``clients/client_K/final``, any ``rounds/round_NNN``),
given by its path or as read by :func:`fedpit.adapter_folder.read_adapter_folder` (read once, for both
:func:`engine_for` and :func:`evaluate`), or the bare backbone. Answers are generated in a fixed, length-sorted batch
order (greedy), so two runs of the same model give the same answers. Offline metrics against the reference: Rouge-L
F, MiniLM embedding cosine, and the model's mean token loss on the reference answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .adapter_folder import SHARED, AdapterFolder, read_adapter_folder
from .backbone import DEFAULT_MODEL
from .config import Config, LoraConfig
from .data import Example
from .engine import Engine
from .federation import make_engine
from .fsutil import write_atomic
from .generate import generate
from .manifest import read_json, write_json
from .metrics import embedding_cosine, rouge_l
from .prompts import build_prompt

log = logging.getLogger("fedpit.evaluate")
ANSWERS, GENERATION = "answers.jsonl", "generation.json"


@dataclass
class EvalResult:
    metrics: dict  # n, rouge_l, cosine, reference_loss (+ judge)
    rows: list[dict]  # per item: instruction, input, reference, answer, rouge_l, cosine

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_rows(folder / ANSWERS, self.rows)
        write_json(folder / "metrics.json", self.metrics)


def _write_rows(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def generation_key(
    engine: Engine, adapter: dict | None, prompts: list[str], max_new_tokens: int, batch_size: int
) -> str:
    """A digest of everything the greedy answers depend on: backbone, adapter weights, prompts, settings."""
    h = hashlib.sha256(
        json.dumps(
            [engine.backbone.path, str(engine.backbone.dtype), engine.template, max_new_tokens, batch_size, prompts],
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")
    )
    for name in sorted(adapter or {}):
        t = adapter[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def saved_answers(folder: Path, key: str, n: int) -> list[str] | None:
    """The answers saved in ``folder`` by an earlier evaluation with the same :func:`generation_key`, else None."""
    try:
        if read_json(folder / GENERATION).get("key") != key:
            return None
        rows = [json.loads(line) for line in (folder / ANSWERS).read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError, AttributeError):
        return None
    answers = [r.get("answer") if isinstance(r, dict) else None for r in rows]
    return answers if len(answers) == n and all(isinstance(a, str) for a in answers) else None


def _folder(adapter: str | Path | AdapterFolder) -> AdapterFolder:
    """The adapter folder, read (and verified) unless it already is."""
    return adapter if isinstance(adapter, AdapterFolder) else read_adapter_folder(adapter)


def _states(adapter: str | Path | AdapterFolder) -> tuple[dict, dict | None]:
    """(adapter, the shared adapter under it or None) of an adapter folder."""
    af = _folder(adapter)
    return af.state, af.shared_state


def engine_for(
    adapter: str | Path | AdapterFolder | None,
    *,
    model: str | None = None,
    dtype: str = "auto",
    max_seq_len: int = 512,
    template: str | None = None,
) -> Engine:
    """An engine whose LoRA shape matches the adapter folder (or the default one for the bare backbone), built by
    :func:`fedpit.federation.make_engine` from the config the folder implies."""
    cfg = Config(seed=0)
    cfg.model.max_seq_len, cfg.model.dtype = max_seq_len, dtype
    meta = {}
    if adapter is not None:
        af = _folder(adapter)  # a stacked private adapter without its shared adapter fails here, before the model
        pc, meta = af.peft_config, af.meta
        cfg.lora = LoraConfig(r=pc["r"], alpha=pc["lora_alpha"], dropout=0.0, target_modules=list(pc["target_modules"]))
        model = model or meta.get("model") or pc.get("base_model_name_or_path")
    cfg.model.name = model or DEFAULT_MODEL
    cfg.model.template = template or meta.get("template", "alpaca")
    return make_engine(cfg)


def _answers(
    engine: Engine,
    adapter: dict | None,
    examples: list[Example],
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    answers_dir: str | Path | None,
) -> list[str]:
    """Greedy answers to ``prompts``: reused from ``answers_dir`` when an earlier evaluation with the same
    :func:`generation_key` saved them there, else generated and (with ``answers_dir``) saved at once."""
    key = generation_key(engine, adapter, prompts, max_new_tokens, batch_size) if answers_dir else ""
    answers = saved_answers(Path(answers_dir), key, len(prompts)) if answers_dir else None
    if answers is not None:
        log.warning(
            "%s: reusing %d answers saved by an earlier evaluation (same model, adapter, prompts and settings)",
            Path(answers_dir) / ANSWERS,
            len(answers),
        )
        return answers
    answers = generate(engine.model, engine.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if answers_dir:
        folder = Path(answers_dir)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [
            {"instruction": e.instruction, "input": e.input, "reference": e.output, "answer": a}
            for e, a in zip(examples, answers)
        ]
        _write_rows(folder / ANSWERS, rows)
        write_json(folder / GENERATION, {"key": key, "n": len(answers)})
    return answers


def evaluate(
    engine: Engine,
    adapter: str | Path | AdapterFolder | dict | None,
    examples: list[Example],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    judge=None,
    embed=None,
    answers_dir: str | Path | None = None,
    shared: dict | None = None,
) -> EvalResult:
    """Answer every example with ``adapter`` loaded (None: the bare backbone) and score the answers. A stacked
    private adapter is evaluated on top of the shared adapter its folder carries (or ``shared``, for a state dict).

    With a ``judge``, its endpoint is checked with one cheap request before anything is generated. With
    ``answers_dir``, the answers are saved there (answers.jsonl, generation.json) as soon as they are generated,
    before any judging, and an earlier evaluation's answers for the same backbone, adapter, prompts and settings are
    reused instead of generated again (so a judge that fails midway costs no regeneration on the rerun).
    """
    if judge is not None and hasattr(judge, "check"):
        judge.check()
    if isinstance(adapter, (str, Path, AdapterFolder)):
        adapter, shared = _states(adapter)
    if adapter is not None:
        engine.load_adapter(adapter)
    scope = engine.model.disable_adapter() if adapter is None else engine.stacked(shared)
    keyed = adapter if shared is None else {**adapter, **{f"{SHARED}.{k}": v for k, v in shared.items()}}
    with scope:
        prompts = [
            build_prompt(e.instruction, e.input, template=engine.template, tokenizer=engine.tokenizer) for e in examples
        ]
        answers = _answers(engine, keyed, examples, prompts, max_new_tokens, batch_size, answers_dir)
        ref_loss = engine.mean_loss(engine.encode(examples))
    cos = embedding_cosine(answers, [e.output for e in examples], embed=embed)
    rows = [
        {
            "instruction": e.instruction,
            "input": e.input,
            "reference": e.output,
            "answer": a,
            "rouge_l": rouge_l(a, e.output),
            "cosine": c,
        }
        for e, a, c in zip(examples, answers, cos)
    ]
    metrics = {
        "n": len(rows),
        "rouge_l": float(np.mean([r["rouge_l"] for r in rows])) if rows else float("nan"),
        "cosine": float(np.mean(cos)) if rows else float("nan"),
        "reference_loss": ref_loss,
    }
    if judge is not None:
        items = [
            {"instruction": e.instruction, "input": e.input, "model_output": a, "reference_output": e.output}
            for e, a in zip(examples, answers)
        ]
        metrics["judge"] = judge.compare(items).as_dict()
    return EvalResult(metrics, rows)
