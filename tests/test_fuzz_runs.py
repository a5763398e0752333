"""Real tiny-model runs from generated valid settings (issue 13's must-reach, beside the no-model fuzz in
test_fuzz_cli.py, whose module-wide sandbox keeps models out: these runs need the model, so they live here)."""

from __future__ import annotations

import contextlib
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpit.cli import main

VALID_RUN = st.fixed_dictionaries(
    {
        "algorithm": st.sampled_from(["fedit", "fedpit", "locit", "fedprox", "fedpit-mix"]),
        "federation.rounds": st.integers(1, 2),
        "partition.num_clients": st.integers(2, 3),
        "partition.alpha": st.sampled_from([0.01, 1.0, 100.0]),
        "train.local_steps": st.integers(1, 2),
        "lora.r": st.sampled_from([2, 4]),
        "selfgen.num_instructions": st.integers(0, 2),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=VALID_RUN)
def test_real_tiny_runs_from_generated_valid_inputs(tiny_model_path, tmp_path_factory, values):
    """A handful of real runs on the tiny model from generated valid settings: each ends with exit 0 and a
    summary.json, or with a one-line error and a progress.json that says failed or interrupted; never a traceback,
    never a run folder without either."""
    out = tmp_path_factory.mktemp("fuzzruns")
    fixed = [f"model.name={tiny_model_path}", "model.dtype=fp32", "model.max_seq_len=96", "train.batch_size=2"]
    fixed += ["eval.max_examples=4", "eval.extraction_n=4", "selfgen.measure=false", "lora.alpha=8"]
    fixed += [f"output_dir={out}", "run_name=fz"]
    argv = ["run", "--quiet"] + [f"--set={kv}" for kv in fixed + [f"{k}={v}" for k, v in values.items()]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    folder = out / "fz"
    if rc == 0:
        assert (folder / "summary.json").is_file(), values
        json.loads((folder / "summary.json").read_text())  # valid JSON (no bare NaN)
    else:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.startswith("fedpit: error")]
        assert rc == 2 and len(lines) == 1, (values, rc, err.getvalue()[-1500:])
        if folder.exists():
            status = json.loads((folder / "progress.json").read_text())["status"]
            assert status in ("failed", "interrupted"), (values, status)
