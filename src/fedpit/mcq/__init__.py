"""Medical multiple-choice benchmarks: PubMedQA, MedQA and MedMCQA accuracy of the backbone and trained adapters.

Two protocols:

- ``lm-eval`` (default): lm-evaluation-harness's own tasks and log-likelihood scoring, on local copies of the test
  sets (:mod:`fedpit.mcq.harness`); acc and acc_norm with lm-eval's standard errors.
- ``flowertune-style``: greedy generation and first-character parsing in the shape of FlowerTune's medical
  evaluation (:mod:`fedpit.mcq.flowertune`); unquantized and not leaderboard-eligible.

Every result (metrics and one row per item: log-likelihoods or generated answers) is cached under the fedpit cache,
keyed by the model's and adapter's content, the benchmark data, the protocol, the limit, dtype and batch size, so a
re-run with the same settings reuses it. :func:`evaluate_models` also writes ``results.json``, ``table.md`` and the
per-item rows into an output folder.
"""

from .data import BENCHMARKS, gold_index, parse_benchmarks, prepare
from .evaluate import (
    CACHE_VERSION,
    PROTOCOLS,
    Z95,
    Settings,
    adapter_fingerprint,
    baselines,
    check_args,
    check_data,
    check_protocol,
    ci95,
    cli_evaluate,
    cli_experiment,
    dtype_name,
    evaluate_models,
    experiment_adapters,
    format_table,
    model_fingerprint,
    notes,
    protocol_label,
    resolve_models,
    run_model,
    write_results,
)

__all__ = [
    "BENCHMARKS",
    "CACHE_VERSION",
    "PROTOCOLS",
    "Settings",
    "Z95",
    "adapter_fingerprint",
    "baselines",
    "check_args",
    "check_data",
    "check_protocol",
    "ci95",
    "cli_evaluate",
    "cli_experiment",
    "dtype_name",
    "evaluate_models",
    "experiment_adapters",
    "format_table",
    "gold_index",
    "model_fingerprint",
    "notes",
    "parse_benchmarks",
    "prepare",
    "protocol_label",
    "resolve_models",
    "run_model",
    "write_results",
]
