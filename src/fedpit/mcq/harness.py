"""Score a model on the medical multiple-choice sets with lm-evaluation-harness (log-likelihood of each choice).

fedpit only points lm-eval at local files: the task YAMLs in ``tasks/`` are lm-eval's ``pubmedqa``,
``medqa_4options`` and ``medmcqa`` with ``dataset_path: json``; ``dataset_kwargs.data_files`` is filled here with the
converted test set. The model is lm-eval's ``hf`` model with ``pretrained=`` the backbone folder and ``peft=`` the
adapter folder; acc, acc_norm and their standard errors are lm-eval's.
"""

from __future__ import annotations

import logging
from pathlib import Path

TASKS_DIR = Path(__file__).with_name("tasks")
log = logging.getLogger("fedpit.mcq")


def task_config(name: str, data_file: str | Path) -> dict:
    """The packaged task YAML for benchmark ``name`` as a dict, reading ``data_file`` as its test split."""
    try:  # lm-eval 0.4.10+: resolves !function next to the YAML
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # older lm-eval
        from lm_eval.utils import load_yaml_config as load_yaml

    cfg = load_yaml(TASKS_DIR / f"fedpit_{name}.yaml")
    cfg["dataset_kwargs"] = {"data_files": {"test": str(data_file)}}
    return cfg


def model_args(model_path: str, adapter: str | Path | None, dtype: str) -> dict:
    args = {"pretrained": model_path, "dtype": dtype}
    if adapter is not None:
        args["peft"] = str(adapter)
    return args


def run_lm_eval(
    data_files: dict[str, str | Path],
    *,
    model_path: str,
    adapter: str | Path | None,
    dtype: str,
    batch_size: int = 8,
    limit: int | None = None,
    device: str = "cpu",
) -> dict[str, dict]:
    """Benchmarks {name: converted file} in one ``lm_eval.simple_evaluate`` call (the model loads once).

    Returns {name: {"metrics": {n, acc, acc_stderr, acc_norm, acc_norm_stderr}, "samples": [one row per item]}}.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # e.g. "chat template is not applied": by design
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args(model_path, adapter, dtype),
        tasks=[task_config(n, f) for n, f in data_files.items()],
        task_manager=TaskManager(include_defaults=False),  # indexing all tasks: ~1 min
        batch_size=batch_size,
        device=device,
        limit=limit or None,
        log_samples=True,
    )
    return {n: task_result(out, f"fedpit_{n}") for n in data_files}


def task_result(out: dict, task: str) -> dict:
    """Metrics and per-item rows of one task from a ``simple_evaluate`` result."""
    res = out["results"][task]
    metrics = {"n": len(out["samples"][task])}
    for m in ("acc", "acc_norm"):
        if f"{m},none" in res:
            metrics[m] = float(res[f"{m},none"])
            se = res.get(f"{m}_stderr,none")
            metrics[f"{m}_stderr"] = float(se) if isinstance(se, (int, float)) else None
    return {"metrics": metrics, "samples": [sample_row(s) for s in out["samples"][task]]}


def sample_row(s: dict) -> dict:
    """One logged lm-eval sample, trimmed to what a reader needs: id, gold, per-choice log-likelihoods, scores."""
    doc = s.get("doc", {})
    lls = [float(r[0]) for r in s.get("filtered_resps", [])]
    return {
        "doc_id": s.get("doc_id"),
        "id": doc.get("pubid", doc.get("id")),
        "target": s.get("target"),
        "loglikelihoods": lls,
        "greedy": [bool(r[1]) for r in s.get("filtered_resps", [])],
        "pred": max(range(len(lls)), key=lls.__getitem__) if lls else None,
        "acc": s.get("acc"),
        "acc_norm": s.get("acc_norm"),
    }
