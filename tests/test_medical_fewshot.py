"""benchmarks/medical_fewshot.py: the fedpit command it builds for the real Medical Meadow data (read from
../shared/data, planned, not trained), and bad input."""

from __future__ import annotations

import pytest
from benchmark_scripts import load

from fedpit.compare import backbone_minutes, estimate_minutes
from fedpit.config import Config

mod = load("medical_fewshot")
needs_data = pytest.mark.skipif(not mod.SOURCES["medalpaca"].is_file(), reason="needs ../shared/data/medalpaca")


@needs_data
def test_the_frontier_on_medical_meadow_holds_out_1000_non_members_and_plans(tmp_path, capsys):
    out = tmp_path / "mm"
    argv = ["--source", "medalpaca", "--n-train", "1150", "--command", "frontier", "--algorithms", "fedit"]
    argv += ["--seeds", "1", "--out", str(out), "--set", "privacy.holdout=0.87", "--audit", "--betas", ""]
    argv += ["--server-lrs", "0.5", "--local-steps", "", "--epsilons", "", "--plan"]
    assert mod.main(argv) == 0
    text = capsys.readouterr().out
    command = next(line for line in text.splitlines() if line.startswith("fedpit frontier --algorithms"))
    # the script's own options, then the frontier's, passed on as given
    assert "--reference gpt-3.5-turbo" in command and "--set privacy.holdout=0.87" in command
    assert command.endswith("--audit --betas  --server-lrs 0.5 --local-steps  --epsilons  --plan")
    assert "--out " + str(out) in command
    assert "fedpit frontier: 2 runs" in text and "membership inference (privacy.holdout = 0.87)" in text
    assert not out.exists()  # a plan writes nothing


@needs_data
def test_more_examples_than_the_source_has_is_one_line_exit_2(capsys):
    assert mod.main(["--source", "medalpaca", "--n-train", "100000", "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n-train 100000: medical_meadow_small.json has" in err


def test_the_command_keeps_the_frontiers_defaults_and_its_own_folder(tmp_path):
    args = lambda *a: mod.argparse.Namespace(  # noqa: E731
        **dict(zip(("command", "algorithms", "seeds", "out", "plan"), a)), limit=60, max_new_tokens=128, overrides=[]
    )
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    frontier = mod.fedpit_argv(args("frontier", None, None, None, False), ["--audit"], train, test, None)
    assert "--algorithms" not in frontier and "--seeds" not in frontier  # fedpit frontier's own defaults
    assert frontier[frontier.index("--out") + 1] == "experiments/medical-frontier" and frontier[-1] == "--audit"
    compare = mod.fedpit_argv(args("compare", None, None, None, True), [], train, test, 66)
    assert compare[:5] == ["compare", "--algorithms", mod.COMPARE_ALGORITHMS, "--seeds", "1"]
    assert compare[compare.index("--out") + 1] == "experiments/medical-fewshot" and compare[-1] == "--plan"
    assert "--reference" not in compare and f"data.test={test}" in compare  # the split scores its own test items


def test_the_plan_prices_the_audit_by_its_member_pool():
    cfg = Config()
    cfg.privacy.holdout, cfg.privacy.canaries = 0.5, 6
    small, large = (estimate_minutes(cfg, audit=True, n_test=24, n_train=n) for n in (160, 1150))
    # about 0.34 s per example loss: the shared model scores the whole pool (990 more), each of the 3 private models
    # its site's members and every non-member (660 more each); the backbone's are cached, counted once by the plan
    assert large - small > 15
    cfg.privacy.holdout = 0.0
    assert estimate_minutes(cfg, audit=True, n_test=24, n_train=1150) < large  # no MIA: no member losses
    assert backbone_minutes(cfg, 1150) == 0  # no membership losses to cache
    cfg.privacy.holdout = 0.87  # 150 members (50 a site), 1,000 non-members
    assert backbone_minutes(cfg, 1150) == pytest.approx(0.9 / 160 * 1150)  # its losses on the whole pool, once
    # FedPIT's audit: the shared model attacked on 100 targets, each private model on its site's 50, each attack
    # repeated on the backbone; membership losses: the shared model on all 1,150, each private model on its 50
    # members and the 1,000 non-members; a canary trie for each of the 5 models (4 adapters and the backbone)
    expected = 2 * 0.014 * (100 + 3 * 50) + 0.9 / 160 * (1150 + 3 * 1050) + 0.4 * 5
    assert estimate_minutes(cfg, audit=True, n_test=24, n_train=1150, audit_only=True) == pytest.approx(expected)
