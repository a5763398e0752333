"""The private model as teacher, one change at a time on the demo: the utility screen before the audited frontier.

Stage ``screen`` (one round from the backbone, seed 42): FedPIT as it is, with the private model answering
(``selfgen.responder = private``), with the shared adapter distilled from the private model
(``fedpit.shared_target = distill``), and with both; FedIT and LocIT after one round are the ends of the scale.
Stage ``accumulate`` (three rounds, which a one-round screen cannot show): the teacher with and without
``selfgen.accumulate``, beside FedIT, LocIT (are the private models as good as a site training alone?) and FedPIT as
it is (the cost of a whole run, side by side). Each run is a plain ``fedpit run`` in its own folder under ``--out``;
a finished run is reused when its settings are the ones asked for (else: an error naming it), an interrupted one is
resumed. The runs go one at a time.

    .venv/bin/python benchmarks/teacher_screen.py --out experiments/teacher-screen [--stages screen,accumulate]

It writes ``benchmarks/results/teacher_screen.json`` (a stage not run keeps its tables and figures): per
setting, the shared model's held-out loss, the share of the backbone -> FedIT gap it closes, the private models'
held-out loss and the run's seconds. No privacy figure is made here: the teacher's privacy comes from the audited
frontier (``fedpit frontier --teacher-mixes``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import RESULTS_DIR, write_result  # noqa: E402

from fedpit.compare import TEACHER as TEACHER_SETTINGS  # noqa: E402
from fedpit.config import load_config, set_value  # noqa: E402
from fedpit.rundir import RunDir  # noqa: E402

TEACHER = [f"{k}={v}" for k, v in TEACHER_SETTINGS]  # the frontier's teacher points, the same settings
STAGES = {
    "screen": (
        1,
        [  # (run name, method, its settings, what the row says)
            ("fedit", "fedit", [], "FedIT"),
            ("locit", "locit", [], "LocIT"),
            ("base", "fedpit", [], "FedPIT (shared model answers, text target)"),
            ("responder-private", "fedpit", ["selfgen.responder=private"], "private model answers"),
            ("distill", "fedpit", ["fedpit.shared_target=distill"], "shared adapter distilled from the private model"),
            ("both", "fedpit", TEACHER, "private model answers and teaches (both)"),
        ],
    ),
    "accumulate": (
        3,
        [
            ("fedit-3r", "fedit", [], "FedIT"),
            ("locit-3r", "locit", [], "LocIT"),
            ("fedpit-3r", "fedpit", [], "FedPIT (shared model answers, text target)"),
            ("teacher-3r", "fedpit", TEACHER, "teacher (both), this round's examples"),
            ("teacher-accumulate-3r", "fedpit", [*TEACHER, "selfgen.accumulate=true"], "teacher (both), accumulated"),
        ],
    ),
}


def fedpit_cli() -> list[str]:
    exe = Path(sys.executable).with_name("fedpit")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "fedpit"]


class ScreenError(Exception):
    """A run folder that holds another setting than the one asked for."""


def run_one(out: Path, name: str, method: str, sets: list[str], rounds: int) -> dict:
    """The run's summary.json: a finished run with these settings is reused, an interrupted one resumed, a missing
    one run."""
    rd = RunDir(out / name)
    overrides = [f"output_dir={out}", f"run_name={name}", f"algorithm={method}", f"federation.rounds={rounds}", *sets]
    if rd.config_file.is_file():
        want = load_config()
        for item in overrides:
            set_value(want, *item.split("=", 1))
        diff = rd.other_settings(want)
        if diff is None:
            raise ScreenError(f"{rd.path}: neither fingerprint.json nor config.toml can be read")
        if diff:
            keys = ", ".join(diff)
            raise ScreenError(f"{rd.path}: a run with other settings ({keys}; delete the folder to run {name} again)")
    if not rd.is_complete():
        argv = [*fedpit_cli(), "run", "-q"]
        argv += ["--resume", str(rd.path)] if rd.config_file.is_file() else [a for o in overrides for a in ("--set", o)]
        print("$", shlex.join(argv), flush=True)
        subprocess.run(argv, check=True)
    return json.loads(rd.summary_file.read_text(encoding="utf-8"))


def rows_of(out: Path, stage: str) -> tuple[list[dict], dict]:
    rounds, cells = STAGES[stage]
    summaries = {name: run_one(out, name, method, sets, rounds) for name, method, sets, _ in cells}
    fedit = summaries[cells[0][0]]["test_loss_per_round"]
    backbone, target = fedit[0], fedit[-1]
    rows = []
    for name, _method, sets, what in cells:
        s = summaries[name]
        losses = s["test_loss_per_round"]
        personal = s.get("personal_test_loss") or []
        shared = s.get("shares_global_adapter", True)  # LocIT has no shared model: its private models only
        rows.append(
            {
                "setting": what,
                "sets": " ".join(sets) or "-",
                "loss": losses[-1] if shared else None,
                "per_round": " / ".join(f"{x:.3f}" for x in losses[1:]) if shared else None,
                "gap": (backbone - losses[-1]) / (backbone - target) if shared else None,
                "private": sum(personal) / len(personal) if personal else None,
                "seconds": s["seconds_this_process"],
            }
        )
    return rows, {"backbone": backbone, "fedit": target, "rounds": rounds}


COLUMNS = [
    {"key": "setting", "header": "setting"},
    {"key": "sets", "header": "--set"},
    {"key": "per_round", "header": "shared model's held-out loss, per round"},
    {"key": "gap", "header": "backbone -> FedIT gap closed", "format": "{:.0%}"},
    {"key": "private", "header": "private models (mean)", "format": "{:.3f}"},
    {"key": "seconds", "header": "run (wall)", "format": "{:.0f} s"},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("experiments/teacher-screen"), help="the runs' folder")
    ap.add_argument("--stages", default="screen,accumulate", help="screen, accumulate or both (comma-separated)")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        known = ", ".join(STAGES)
        print(f"teacher_screen.py: error: --stages: {', '.join(unknown) or 'none'} (known: {known})", file=sys.stderr)
        return 2
    old = RESULTS_DIR / "teacher_screen.json"
    kept = json.loads(old.read_text(encoding="utf-8")) if old.is_file() else {}
    tables = {k: t for k, t in kept.get("tables", {}).items() if k not in stages}  # the stages not run this time
    values = {k: v for k, v in kept.get("values", {}).items() if k.split("_", 1)[0] not in stages}
    for stage in stages:
        try:
            rows, ends = rows_of(args.out, stage)
        except ScreenError as e:
            print(f"teacher_screen.py: error: {e}", file=sys.stderr)
            return 2
        r = ends["rounds"]
        tables[stage] = {
            "caption": f"The demo at seed 42, {r} round{'s' if r > 1 else ''} from the backbone (held-out loss "
            f"{ends['backbone']:.3f}); FedIT reaches {ends['fedit']:.3f}. The private models' loss is the mean of the "
            "3 sites' personalized models on the same held-out set. One run each.",
            "columns": COLUMNS,
            "rows": rows,
        }
        for row, (name, *_) in zip(rows, STAGES[stage][1], strict=True):
            key = name.replace("-", "_")
            if row["gap"] is not None:
                values[f"{stage}_gap_{key}"] = {"value": row["gap"], "format": "{:.0%}"}
                values[f"{stage}_loss_{key}"] = {"value": row["loss"], "format": "{:.3f}"}
            if row["private"] is not None:
                values[f"{stage}_private_{key}"] = {"value": row["private"], "format": "{:.3f}"}
            values[f"{stage}_seconds_{key}"] = {"value": row["seconds"], "format": "{:.0f} s"}
        seconds = {name: row["seconds"] for row, (name, *_) in zip(rows, STAGES[stage][1], strict=True)}
        if "fedpit-3r" in seconds:  # each teacher setting's whole run against FedPIT's, run in turn
            for name in ("teacher-3r", "teacher-accumulate-3r"):
                ratio = seconds[name] / seconds["fedpit-3r"]
                values[f"{stage}_cost_ratio_{name.replace('-', '_')}"] = {"value": ratio, "format": "{:.2f}x"}
        for row in rows:
            gap = "-" if row["gap"] is None else f"{row['gap']:.0%}"
            private = "-" if row["private"] is None else f"{row['private']:.3f}"
            print(f"[{stage}] {row['setting']:<48} {row['per_round'] or '-':<22} gap {gap:>5}  private {private}")
    path = write_result(
        "teacher_screen",
        title="The private model as teacher, one change at a time (demo, seed 42)",
        tables=tables,
        values=values,
        notes=[
            "Utility only: the teacher's privacy is measured on the audited frontier "
            "(benchmarks/results/frontier.json)."
        ],
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
