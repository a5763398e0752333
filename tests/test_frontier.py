"""The privacy-utility frontier (``fedpit frontier``: its grid, plan, audit, verdicts and report section) and
``fedpit report --benchmarks``."""

import json
import struct
from dataclasses import replace

import pytest
from benchmark_scripts import load

from fedpit.algorithms import REGISTRY, Method, fedit, load_all
from fedpit.audit.run import AUDIT_FILE
from fedpit.cli import main
from fedpit.compare import EvalOptions, audit_fields, check_audit, frontier_grid, plan
from fedpit.dominance import Point, overall, verdict
from fedpit.errors import ConfigError
from fedpit.report import _point_label, baseline_curves, frontier_rows, frontier_verdicts, noise_points, write_report
from fedpit.rundir import RunDir, write_json


def _rec(algo, seed, model="shared", setting="", **metrics):
    return {"algorithm": algo, "seed": seed, "setting": setting, "model": model, **metrics}


def _write(tmp_path, recs, name="fr"):
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"meta": {"name": name, "command": "fedpit frontier"}, "records": recs, "curves": []}))
    return f


def _frontier_results(tmp_path):
    """Three seeds, no audit; each run's floor differs by seed, so leakage above it must be taken row by row."""
    recs = []
    for seed, floor in ((1, 0.10), (2, 0.12), (3, 0.14)):
        d = (seed - 2) * 0.01  # -0.01, 0, +0.01 around each mean
        recs += [
            _rec("fedit", seed, rouge_l=0.17 + d, cosine=0.60, reference_loss=2.70, leak_rouge_l=floor + 0.04 + d),
            _rec("fedpit", seed, rouge_l=0.12, cosine=0.50, reference_loss=3.00, leak_rouge_l=floor + 0.00),
            _rec("fedpit", seed, "private", rouge_l=0.16, cosine=0.58, reference_loss=2.75, leak_rouge_l=floor + 0.02),
            _rec("fedpit-mix", seed, setting="fedpit.beta=0.5", rouge_l=0.15, cosine=0.55, reference_loss=2.80)
            | {"leak_rouge_l": floor + 0.05},  # worse than fedit on both axes: off the front
            _rec("backbone", seed, "bare", rouge_l=0.11, cosine=0.52, reference_loss=3.10, leak_rouge_l=floor),
            _rec("locit", seed, "private", rouge_l=0.165, cosine=0.59, reference_loss=2.72),  # no leakage measured
        ]
    for r in recs:
        if "leak_rouge_l" in r:
            r["leak_floor_rouge_l"] = {1: 0.10, 2: 0.12, 3: 0.14}[r["seed"]]
    return _write(tmp_path, recs)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _section(md, title):
    """The text of one ### subsection of the report."""
    start = md.index(f"### {title}")
    end = md.find("\n### ", start + 1)
    return md[start : end if end > 0 else len(md)]


def test_frontier_report_from_a_small_results_file(tmp_path):
    files = write_report(_frontier_results(tmp_path))
    md = files["md"].read_text()
    section = md[md.index("## Privacy-utility frontier") :]
    # leakage above floor per row, then mean ± sample std over seeds; fedit: 0.04 + (-0.01, 0, 0.01)
    assert "| fedit shared | 3 | 0.040 ± 0.010 | 2.700 ± 0.000 | 0.170 ± 0.010 | 0.600 ± 0.000 |" in section
    assert "| fedpit shared | 3 | 0.000 ± 0.000 | 3.000 ± 0.000 | 0.120 ± 0.000 | 0.500 ± 0.000 |" in section
    assert "| fedpit-mix β=0.5 shared | 3 | 0.050 ± 0.000 |" in section
    assert "| bare backbone | 3 | 0.000 ± 0.000 | 3.100 ± 0.000 | 0.110 ± 0.000 | 0.520 ± 0.000 |" in section
    assert "locit" not in section  # no leakage measured: not a point
    head = section[: section.index("### ")]
    order = [line.split(" | ")[0] for line in head.splitlines() if line.startswith("| ") and " | 3 | " in line]
    assert order == ["| fedit shared", "| fedpit shared", "| fedpit private", "| fedpit-mix β=0.5 shared"] + [
        "| bare backbone"
    ]
    # no baseline curve was run: the verdicts say so; no audit: no MIA or exposure section
    extraction = _section(md, "extraction Rouge-L above the backbone: which methods are dominated")
    assert "No baseline curve has points on this measure" in extraction
    assert "membership inference AUC" not in section.split("\n\n")[0] and "### canary exposure" not in section
    # against FedIT, in the terms: leakage excess x FedIT's, share of the backbone -> FedIT loss gap closed
    assert "| fedit shared | 1.00 | 100% | 100.0% | 100.0% |" in section
    assert "| fedpit shared | 0.00 | 25% | 70.6% | 83.3% |" in section
    assert "| fedpit-mix β=0.5 shared | 1.25 | 75% | 88.2% | 91.7% |" in section
    assert "| bare backbone | 0.00 | 0% | 64.7% | 86.7% |" in section
    assert "![privacy-utility frontier](frontier.png)" in section
    width, height = _png_size(tmp_path / "frontier.png")
    assert 1.3 * height < width < 2.5 * height  # one panel (extraction x held-out loss) and the legend
    assert files["frontier.png"] == tmp_path / "frontier.png"
    assert "<h2>Privacy-utility frontier</h2>" in files["html"].read_text()


def _audited_results(tmp_path):
    """An audited frontier: FedIT (3 seeds) and its turned-down curve (1 seed each), DP-SGD at two epsilons, the
    methods and the bare backbone, each with all three privacy measures (lower is more private)."""
    recs = []
    for s in (1, 2, 3):
        d = (s - 2) * 0.01
        m = dict(rouge_l=0.17, cosine=0.6, audit_leaks=0)
        recs += [
            _rec("fedit", s, reference_loss=2.70 + d, mia_ref_auc=0.70 + d, canary_exposure_mean=13 + s, **m)
            | {"audit_excess_rouge_l": 0.04, "mia_loss_auc": 0.6, "mia_n_members": 120, "mia_n_nonmembers": 40},
            _rec("fedpit-mix", s, setting="fedpit.beta=0.5", reference_loss=2.80, mia_ref_auc=0.62)
            | {"canary_exposure_mean": 9.0, "audit_excess_rouge_l": 0.02},
            _rec("fedpit", s, reference_loss=3.0, mia_ref_auc=0.5, canary_exposure_mean=0.5, audit_excess_rouge_l=0.0),
            _rec("fedpit", s, "private", reference_loss=2.75, mia_ref_auc=0.66, canary_exposure_mean=10.0)
            | {"audit_excess_rouge_l": 0.03},
            _rec("backbone", s, "bare", reference_loss=3.1, mia_ref_auc=0.5, canary_exposure_mean=0.4)
            | {"audit_excess_rouge_l": 0.0, "canary_k": 3, "canary_repeats": 10},
        ]
    for eta, loss, auc, exposure, ex in (
        (0.25, 3.0, 0.55, 3, 0.01),
        (0.5, 2.85, 0.6, 6, 0.015),
        (0.75, 2.76, 0.66, 9, 0.03),
    ):
        recs.append(
            _rec("fedit", 1, setting=f"federation.server_lr={eta}", reference_loss=loss, mia_ref_auc=auc)
            | {"canary_exposure_mean": exposure, "audit_excess_rouge_l": ex}
        )
    for eps, loss, auc in ((1, 3.05, 0.51), (100, 2.9, 0.58)):
        recs.append(
            _rec("fedit-dp", 1, setting=f"dp.target_epsilon={eps}", reference_loss=loss, mia_ref_auc=auc)
            | {"canary_exposure_mean": 1.0, "audit_excess_rouge_l": 0.005}
        )
    return _write(tmp_path, recs, "audited")


def test_audited_frontier_judges_each_privacy_measure(tmp_path):
    files = write_report(_audited_results(tmp_path))
    md = files["md"].read_text()
    main_table = md[md.index("## Privacy-utility frontier") : md.index("### ")]
    assert "| fedit η=0.5 shared | 1 | 0.600 | 6.00 | 0.015 | 2.850 |" in main_table  # a curve point, 1 seed
    assert "| fedit-dp ε=100 shared | 1 | 0.580 | 1.00 | 0.005 | 2.900 |" in main_table
    mia = _section(md, "membership inference AUC (reference-calibrated loss): which methods are dominated")
    exposure = _section(md, "canary exposure (mean): which methods are dominated")
    extraction = _section(md, "extraction Rouge-L above the backbone: which methods are dominated")
    assert "| vs FedIT turned down | vs DP-SGD | verdict |" in mia  # no fewer-steps curve was run
    # on MIA: fedpit-mix (0.62, 2.80) lies above the line from eta 0.5 (0.60, 2.85) to eta 0.75 (0.66, 2.76)
    assert "| fedpit-mix β=0.5 shared | 3 | 0.620 ± 0.000 | 2.800 ± 0.000 | dominates the line between η=0.5 and" in mia
    # on exposure: eta 0.75 has as much exposure (9 bits) and a lower loss: dominated, by a run of the curve
    assert "| fedpit-mix β=0.5 shared | 3 | 9.00 ± 0.00 | 2.800 ± 0.000 | dominated by η=0.75 |" in exposure
    assert "Dominated: fedpit-mix β=0.5 shared (dominated by FedIT turned down (η=0.75))." in exposure
    # FedIT's spread (exposure ± 1 bit) overlaps the line from eta 0.75 to FedIT: a tie within noise
    assert "fedpit private (ties with FedIT turned down (the line between η=0.75 and FedIT), within noise" in exposure
    # FedIT itself is on the turned-down curve (its end); beside DP-SGD it leaks more and learns more
    assert "| fedit shared | 3 | 0.700 ± 0.010 | 2.700 ± 0.010 | - | no point in range |" in mia
    assert "No baseline in range: fedit shared." in extraction
    # the more private of the two DP points is beaten by FedPIT's shared model: as private, a lower loss
    assert "fedpit shared (dominates FedIT turned down (bare backbone); dominates DP-SGD (ε=1))" in extraction
    details = _section(md, "Privacy measures in detail")
    assert "| fedit shared | 0.600 ± 0.000 | 0.700 ± 0.010 | 120 / 40 | - |" in details
    assert "| bare backbone | - | 0.500 ± 0.000 | - | 3 x 10 |" in details
    width, height = _png_size(tmp_path / "frontier.png")
    assert width > 3 * height  # three panels: one per privacy measure, against the held-out loss
    html = files["html"].read_text()
    assert "<h3>canary exposure (mean): which methods are dominated</h3>" in html


def test_a_one_seed_frontier_says_its_verdicts_have_no_noise_allowance(tmp_path):
    one = [r for r in json.loads(_audited_results(tmp_path).read_text())["records"] if r["seed"] == 1]
    md = write_report(_write(tmp_path, one, "one seed"))["md"].read_text()
    mia = _section(md, "membership inference AUC (reference-calibrated loss): which methods are dominated")
    assert "| fedpit-mix β=0.5 shared | 1 |" in mia and "Single runs (one seed) among the judged points: fedit" in mia
    three = write_report(_audited_results(tmp_path))["md"].read_text()
    assert "Single runs (one seed)" not in three  # every judged point has 3 seeds


def test_a_one_run_point_borrows_the_spread_of_trained_points_not_the_backbones(tmp_path):
    from fedpit.report import _spread

    recs = [_rec("backbone", s, "bare", reference_loss=3.1, mia_ref_auc=0.5) for s in (1, 2, 3)]
    recs += [_rec("fedit", s, reference_loss=2.70 + 0.01 * (s - 2), mia_ref_auc=0.7) for s in (1, 2, 3)]
    recs += [_rec("fedpit-mix", 1, setting="fedpit.beta=0.5", reference_loss=2.8, mia_ref_auc=0.65)]
    rows = frontier_rows(recs)
    mix = next(r for r in rows if r["algorithm"] == "fedpit-mix")
    assert _spread(rows, "reference_loss")(mix) == pytest.approx(0.01)  # FedIT's sd, not pooled with the backbone's 0


def test_baseline_curves_are_ordered_by_their_knob_and_closed_by_fedit_and_the_backbone(tmp_path):
    rows = frontier_rows(json.loads(_audited_results(tmp_path).read_text())["records"])
    curves = dict(baseline_curves(rows))
    assert [r["label"] for r in curves["FedIT turned down"]] == [
        "bare backbone",
        "fedit η=0.25 shared",
        "fedit η=0.5 shared",
        "fedit η=0.75 shared",
        "fedit shared",
    ]
    assert [r["label"] for r in curves["DP-SGD"]] == ["fedit-dp ε=1 shared", "fedit-dp ε=100 shared"]
    judged = {r["label"]: v for r, v in frontier_verdicts(rows, "mia_ref_auc", "reference_loss", False)}
    assert set(judged) == {"fedit shared", "fedpit shared", "fedpit private", "fedpit-mix β=0.5 shared"}
    assert list(judged["fedit shared"]) == ["DP-SGD"]  # not judged against the curves it ends


# ---------------------------------------------------------------------------------------------------------------
# The verdicts, on constructed points (fedpit.dominance): privacy lower is better; utility here higher is better.

CURVE = [Point("a", 0.0, 0.0), Point("b", 1.0, 1.0), Point("c", 2.0, 1.5)]


@pytest.mark.parametrize(
    ("point", "expected", "against", "means"),
    [
        (Point("m", 1.0, 0.8), "dominated", "b", "dominated"),  # a run: as private, more utility
        (Point("m", 1.5, 1.1), "dominated", "the line between b and c", "dominated"),  # the line at x 1.5 is 1.25
        (Point("m", 1.5, 1.4), "dominates", "the line between b and c", "dominates"),  # above the line
        (Point("m", 1.0, 1.0), "ties", "b", "equal"),  # on a run exactly
        (Point("m", -0.5, 0.2), "dominates", "a", "dominates"),  # more private than every run, more utility than a
        (Point("m", -0.5, -0.2), "no baseline in range", None, "out of range"),  # more private, less utility
        (Point("m", 3.0, 2.0), "no baseline in range", None, "out of range"),  # leaks more, learns more
        (Point("m", 3.0, 1.0), "dominated", "c", "dominated"),  # leaks more and learns less than c
    ],
)
def test_verdict_on_constructed_points(point, expected, against, means):
    v = verdict(point, CURVE, higher=True)
    assert (v.verdict, v.against.label if v.against else None, v.means) == (expected, against, means)


def test_verdict_within_noise_when_the_spreads_overlap():
    noisy = [Point(q.label, q.x, q.y, sx=0.1, sy=0.2) for q in CURVE]
    v = verdict(Point("m", 1.0, 0.9, sx=0.05, sy=0.05), noisy, higher=True)  # b is 0.1 better: within 0.25
    assert (v.verdict, v.means, v.within_noise) == ("ties", "dominated", True)
    assert v.text("FedIT turned down") == "ties with FedIT turned down (b), within noise (dominated on the means)"
    v = verdict(Point("m", 1.0, 0.5, sx=0.05, sy=0.05), noisy, higher=True)  # 0.5 better: resolved
    assert (v.verdict, v.within_noise) == ("dominated", False)
    v = verdict(Point("m", 1.5, 1.35, sy=0.1), noisy, higher=True)  # above the line by 0.1, spreads 0.1 + 0.2
    assert (v.verdict, v.means, v.against.sy) == ("ties", "dominates", pytest.approx(0.2))


def test_verdict_reads_a_lower_is_better_utility_and_an_empty_curve():
    losses = [Point("eta=0.25", 0.55, 3.0), Point("eta=0.75", 0.66, 2.76)]
    assert verdict(Point("mix", 0.62, 2.80), losses, higher=False).verdict == "dominates"  # line at 0.62: 2.85
    assert verdict(Point("mix", 0.62, 2.90), losses, higher=False).verdict == "dominated"
    assert verdict(Point("mix", 0.62, 2.90), [], higher=False).verdict == "no baseline in range"
    vs = [verdict(Point("m", 3.0, 1.0), CURVE, higher=True), verdict(Point("m", 1.5, 1.4), CURVE, higher=True)]
    assert overall(vs) == "dominated" and overall(vs[1:]) == "dominates" and overall([]) == "no baseline in range"


# ---------------------------------------------------------------------------------------------------------------
# The grid: methods, betas, the baseline curves, seeds per cell; the plan; bad values.


@pytest.fixture
def fedit_dp(monkeypatch):
    """``fedit-dp``, or a stand-in while the real one is being built: the grid only needs it registered."""
    if "fedit-dp" not in load_all():
        monkeypatch.setitem(REGISTRY, "fedit-dp", Method("fedit-dp", "stand-in", fedit.client_update, fedit.fedavg))


def _attack_on(cfg):
    return replace(cfg, eval=replace(cfg.eval, extraction_every_round=True))


def test_frontier_grid_expands_methods_betas_and_seeds(tiny_cfg):
    cfg = _attack_on(tiny_cfg)
    methods = ["fedit", "fedpit", "fedpit-mix", "fedmit", "locit", "cenit"]
    cells = frontier_grid(cfg, methods, [1, 2, 3], "0,0.25,0.5,0.75,1")
    assert len(cells) == 3 * (5 + 5) and len({c.run_name for _, c in cells}) == 30
    first_seed = [(c.algorithm, label, c.fedpit.beta) for label, c in cells[:10]]
    assert [c.seed for _, c in cells] == [1] * 10 + [2] * 10 + [3] * 10  # whole seeds first
    mix = [("fedpit-mix", f"fedpit.beta={b}", float(b)) for b in ("0", "0.25", "0.5", "0.75", "1")]
    plain = [(m, "", cfg.fedpit.beta) for m in methods if m != "fedpit-mix"]
    assert first_seed == plain[:2] + mix + plain[2:]  # in the order of --algorithms, fedpit-mix once per beta
    assert frontier_grid(cfg, ["fedpit-mix"], [7], "0.2")[0][1].fedpit.beta == 0.2
    assert [(lab, c.fedpit.beta) for lab, c in frontier_grid(cfg, ["fedpit-mix"], [7], "")] == [("", cfg.fedpit.beta)]
    with pytest.raises(ConfigError, match="extraction"):
        frontier_grid(tiny_cfg, ["fedit"], [1])
    assert frontier_grid(tiny_cfg, ["fedit"], [1], audit=True)  # the audit measures extraction itself
    with pytest.raises(ConfigError, match="fedpit.beta"):
        frontier_grid(cfg, ["fedpit-mix"], [1], "0.5,2")
    with pytest.raises(ConfigError, match="more than once"):
        frontier_grid(cfg, ["fedpit-mix", "fedpit-mix"], [1])


def test_frontier_grid_adds_the_baseline_curves_with_seeds_per_cell(tiny_cfg, fedit_dp):
    cfg = _attack_on(tiny_cfg)
    kw = dict(server_lrs="0.25,0.5", local_steps="1", epsilons="1,100", sweep_seeds=[1])
    cells = frontier_grid(cfg, ["fedit", "fedpit-mix"], [1, 2], "0.5,0.6", **kw)
    seed1 = [(c.algorithm, label) for label, c in cells if c.seed == 1]
    assert seed1 == [
        ("fedit", ""),
        ("fedpit-mix", "fedpit.beta=0.5"),
        ("fedpit-mix", "fedpit.beta=0.6"),
        ("fedit", "federation.server_lr=0.25"),
        ("fedit", "federation.server_lr=0.5"),
        ("fedit", "train.local_steps=1"),
        ("fedit-dp", "dp.target_epsilon=1"),
        ("fedit-dp", "dp.target_epsilon=100"),
    ]
    # by default every method (fedpit-mix at each beta) gets --seeds, every curve point --sweep-seeds
    assert [(c.algorithm, label) for label, c in cells if c.seed == 2] == seed1[:3]
    dp = [c for label, c in cells if c.algorithm == "fedit-dp"]
    assert [(c.dp.target_epsilon, c.dp.noise_multiplier) for c in dp] == [(1.0, 0.0), (100.0, 0.0)]
    lr = next(c for label, c in cells if label == "federation.server_lr=0.5")
    assert lr.federation.server_lr == 0.5 and lr.run_name == "fedit-s1-federation_server_lr-0_5"
    assert next(c for label, c in cells if label == "train.local_steps=1").train.local_steps == 1
    # the plan: 3 seeds for the deciding cells, 1 for the rest
    decide = "fedit,fedpit.beta=0.60,federation.server_lr=0.5,dp.target_epsilon=100"
    cells = frontier_grid(cfg, ["fedit", "fedpit-mix"], [1, 2, 3], "0.5,0.6", **kw, deciding=decide)
    seeds = {}
    for label, c in cells:
        seeds.setdefault(label or c.algorithm, []).append(c.seed)
    assert seeds == {
        "fedit": [1, 2, 3],
        "fedpit.beta=0.5": [1],
        "fedpit.beta=0.6": [1, 2, 3],
        "federation.server_lr=0.25": [1],
        "federation.server_lr=0.5": [1, 2, 3],
        "train.local_steps=1": [1],
        "dp.target_epsilon=1": [1],
        "dp.target_epsilon=100": [1, 2, 3],
    }
    assert [c.seed for _, c in cells] == sorted(c.seed for _, c in cells)  # whole seeds first
    with pytest.raises(ConfigError, match="--deciding: 'federation.server_lr=0.3' is not a cell"):
        frontier_grid(cfg, ["fedit"], [1], server_lrs="0.5", deciding="federation.server_lr=0.3")


def test_frontier_grid_adds_the_teacher_points_as_a_method(tiny_cfg):
    cfg = _attack_on(tiny_cfg)
    cells = frontier_grid(cfg, ["fedit", "fedpit"], [1, 2], "", teacher_mixes="0.5,1", sweep_seeds=[1])
    names = [(c.algorithm, label, c.seed) for label, c in cells]
    # a method like fedpit-mix's betas: every --seeds by default, not the curves' --sweep-seeds
    assert names == [
        ("fedit", "", 1),
        ("fedpit", "", 1),
        ("fedpit", "fedpit.teacher_mix=0.5", 1),
        ("fedpit", "fedpit.teacher_mix=1", 1),
        ("fedit", "", 2),
        ("fedpit", "", 2),
        ("fedpit", "fedpit.teacher_mix=0.5", 2),
        ("fedpit", "fedpit.teacher_mix=1", 2),
    ]
    teach = [c for label, c in cells if label.startswith("fedpit.teacher_mix")]
    assert {(c.selfgen.responder, c.fedpit.shared_target) for c in teach} == {("private", "distill")}
    assert [c.fedpit.teacher_mix for c in teach[:2]] == [0.5, 1.0]
    plain = next(c for label, c in cells if c.algorithm == "fedpit" and not label)
    assert (plain.selfgen.responder, plain.fedpit.shared_target) == ("shared", "text")  # plain fedpit untouched
    assert len({c.run_name for _, c in cells}) == len(cells)
    one = frontier_grid(cfg, ["fedpit"], [1, 2], "", teacher_mixes="1", sweep_seeds=[1], deciding="fedpit")
    assert [(label, c.seed) for label, c in one] == [("", 1), ("fedpit.teacher_mix=1", 1), ("", 2)]


def test_frontier_grid_adds_the_accumulating_teacher_beside_the_plain_one(tiny_cfg):
    cfg = _attack_on(tiny_cfg)
    cells = frontier_grid(cfg, ["fedpit"], [1], "", teacher_mixes="1", teacher_accumulate="true")
    by_label = {label: c for label, c in cells}
    assert list(by_label) == ["", "fedpit.teacher_mix=1", "selfgen.accumulate=true"]
    acc, plain_teacher = by_label["selfgen.accumulate=true"], by_label["fedpit.teacher_mix=1"]
    assert (acc.selfgen.responder, acc.fedpit.shared_target, acc.selfgen.accumulate) == ("private", "distill", True)
    assert not plain_teacher.selfgen.accumulate and not by_label[""].selfgen.accumulate  # only its own point
    assert acc.fedpit.teacher_mix == cfg.fedpit.teacher_mix and acc.run_name != plain_teacher.run_name
    # a method point: run with every --seeds unless --deciding says otherwise, and named there by its switch
    two = frontier_grid(cfg, ["fedpit"], [1, 2], "", teacher_accumulate="true", sweep_seeds=[1], deciding="fedpit")
    assert [(label, c.seed) for label, c in two] == [("", 1), ("selfgen.accumulate=true", 1), ("", 2)]
    two = frontier_grid(
        cfg, ["fedit"], [1, 2], "", teacher_accumulate="true", sweep_seeds=[1], deciding="selfgen.accumulate=true"
    )
    assert [(c.algorithm, c.seed) for _, c in two] == [("fedit", 1), ("fedpit", 1), ("fedpit", 2)]


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("server_lrs", "0.5,1", "--server-lrs '0.5,1': 1 is not in (0, 1)"),
        ("server_lrs", "0", "--server-lrs '0': 0 is not in (0, 1)"),
        ("server_lrs", "0.5,0.50", "the same value is listed twice"),
        ("server_lrs", "half", "'half' is not a number"),
        ("local_steps", "1,2", "--local-steps '1,2': 2 is FedIT's own train.local_steps"),  # tiny_cfg: 2 steps
        ("local_steps", "1.5", "1.5 is not an integer >= 1"),
        ("local_steps", "0", "0 is not an integer >= 1"),
        ("epsilons", "0,10", "--epsilons '0,10': 0 is not a positive epsilon"),
        ("epsilons", "inf", "inf is not a positive epsilon"),
        ("epsilons", "0.01", "--epsilons '0.01': dp.target_epsilon: 0.01 cannot be reached"),  # DP-SGD preflight
    ],
)
def test_bad_curve_values_are_refused_naming_the_flag(tiny_cfg, fedit_dp, flag, value, words):
    if "cannot be reached" in words and REGISTRY["fedit-dp"].description == "stand-in":
        pytest.skip("needs the real fedit-dp's preflight")
    with pytest.raises(ConfigError) as e:
        frontier_grid(_attack_on(tiny_cfg), ["fedit"], [1], **{flag: value})
    assert words in str(e.value) and "'' skips this curve" in str(e.value) and "\n" not in str(e.value)


def test_an_unregistered_dp_method_is_refused_unless_its_curve_is_skipped(tiny_cfg, monkeypatch):
    monkeypatch.delitem(REGISTRY, "fedit-dp", raising=False)
    monkeypatch.setattr("fedpit.algorithms.load_all", lambda: REGISTRY)
    with pytest.raises(ConfigError, match="--epsilons '1': algorithm: 'fedit-dp' is not one of"):
        frontier_grid(_attack_on(tiny_cfg), ["fedit"], [1], epsilons="1")
    assert len(frontier_grid(_attack_on(tiny_cfg), ["fedit"], [1], epsilons="")) == 1


def test_plan_counts_runs_minutes_and_what_gets_fewer_seeds(tiny_cfg, fedit_dp):
    cfg = _attack_on(tiny_cfg)
    kw = dict(server_lrs="0.5", epsilons="10", sweep_seeds=[1], deciding="fedit,federation.server_lr=0.5")
    cells = frontier_grid(cfg, ["fedit", "fedpit"], [1, 2, 3], **kw)
    text = plan(cells, audit=True, ev=EvalOptions(limit=24), command="frontier")
    lines = text.splitlines()
    assert lines[0].startswith("fedpit frontier: 8 runs, about ") and "with the audit" in lines[0]
    assert lines[1] == "  audit: extraction (eval.extraction_n = 100); no MIA (privacy.holdout is 0); no exposure " + (
        "(privacy.canaries is 0)"
    )
    assert any(line.split()[:4] == ["fedit", "seeds", "1,2,3", "3"] for line in lines)
    assert any(line.split()[:4] == ["fedit", "federation.server_lr=0.5", "seeds", "1,2,3"] for line in lines)
    assert lines[-1] == "  fewer seeds than 3: fedpit, fedit-dp dp.target_epsilon=10"
    value, unit = text.split("about ")[1].split(" ")[:2]
    assert unit in ("min", "h")
    minutes = lambda t: float(t.split("about ")[1].split(" ")[0]) * (60 if " h of CPU" in t else 1)  # noqa: E731
    assert minutes(plan(cells, audit=False, ev=EvalOptions(limit=24))) < minutes(text)  # the audit costs CPU


def test_the_plan_prices_the_teacher_above_plain_fedpit(tiny_cfg):
    from fedpit.compare import estimate_minutes

    cells = dict(frontier_grid(_attack_on(tiny_cfg), ["fedpit"], [1], "", teacher_mixes="1", teacher_accumulate="true"))
    plain, teacher, acc = (estimate_minutes(c, audit=True, n_test=24, n_train=100) for c in cells.values())
    assert plain < teacher < acc  # the measured whole-run ratios (1.13x, 1.23x) on the training part


def test_plan_counts_the_runs_already_in_the_experiment_folder_apart(tiny_cfg, tmp_path):
    held_out = replace(tiny_cfg, privacy=replace(tiny_cfg.privacy, holdout=0.5))  # membership losses to price
    cells = frontier_grid(_attack_on(held_out), ["fedit"], [1, 2], "")
    cfg = cells[0][1]
    out = tmp_path / "exp"
    minutes = lambda t: float(t.split("about ")[1].split(" ")[0])  # noqa: E731
    before = plan(cells, audit=True, out=out)
    assert before.startswith("fedpit experiment: 2 runs, about ") and "trained" not in before
    rd = RunDir(out / "runs" / cfg.run_name)  # seed 1 trained: its summary; then its audit
    rd.path.mkdir(parents=True)
    write_json(rd.summary_file, {"algorithm": "fedit"})
    assert "(seed 1 finished)" in plan(cells, audit=False, out=out)  # nothing left to do without the audit
    trained = plan(cells, audit=True, out=out)
    assert "(seed 1 trained, its audit to run)" in trained
    assert minutes(before) / 2 < minutes(trained) < minutes(before)  # the audit is left of it, not the training
    settings = {**vars(cfg.privacy), "extraction_n": cfg.eval.extraction_n}
    for audit in ({}, {"client": 0, "settings": settings}, {"settings": {**settings, "extraction_n": 1}}):
        write_json(rd.path / AUDIT_FILE, audit)  # none of these would be reused: the audit runs again
        assert plan(cells, audit=True, out=out) == trained
    write_json(rd.path / AUDIT_FILE, {"client": None, "settings": settings})
    after = plan(cells, audit=True, out=out)
    assert f"2 runs (1 trained in {out}, reused; 1 to train)" in after
    fedit = next(line for line in after.splitlines() if line.split()[:1] == ["fedit"])
    assert fedit.split()[:4] == ["fedit", "seeds", "1,2", "1"] and fedit.endswith("(seed 1 finished)")
    assert minutes(after) == pytest.approx(minutes(before) / 2, abs=1)  # whole minutes
    backbone = "bare backbone losses (once per data file)"  # priced once, while any run's audit is to come
    assert [t.count(backbone) for t in (before, trained, after)] == [1, 1, 1]
    from fedpit.compare import _tests, backbone_minutes, estimate_minutes
    from fedpit.federation import load_train

    each = estimate_minutes(cfg, audit=True, n_test=len(_tests(cfg, EvalOptions())), n_train=len(load_train(cfg)))
    base = backbone_minutes(cfg, len(load_train(cfg)))
    assert base > 0 and minutes(before) == pytest.approx(2 * each + base, abs=0.5)  # printed in whole minutes
    rd2 = RunDir(out / "runs" / cells[1][1].run_name)
    rd2.path.mkdir(parents=True)
    write_json(rd2.summary_file, {"algorithm": "fedit"})
    write_json(rd2.path / AUDIT_FILE, {"client": None, "settings": settings})
    done = plan(cells, audit=True, out=out)
    assert backbone not in done and "about 0 min" in done


def test_a_run_in_out_is_reused_only_with_its_own_settings(tiny_cfg, tmp_path, capsys):
    from fedpit.compare import check_reuse
    from fedpit.config import to_toml
    from fedpit.rundir import FINGERPRINT, fingerprint

    cells = frontier_grid(_attack_on(tiny_cfg), ["fedit"], [1], "")
    other = frontier_grid(replace(_attack_on(tiny_cfg), train=replace(tiny_cfg.train, lr=0.5)), ["fedit"], [1], "")
    out = tmp_path / "exp"
    rd = RunDir(out / "runs" / cells[0][1].run_name)
    rd.path.mkdir(parents=True)
    rd.config_file.write_text(to_toml(cells[0][1]))  # an interrupted run: its config, no summary
    for _ in ("interrupted", "finished"):
        check_reuse(cells, out)  # its own settings: reused (resumed)
        with pytest.raises(ConfigError, match=r"started with other settings \(train.lr differ\)"):
            check_reuse(other, out)
        write_json(rd.summary_file, {"algorithm": "fedit"})
    write_json(rd.path / FINGERPRINT, fingerprint(cells[0][1]))  # the fingerprint, when there, is what counts
    check_reuse(cells, out)
    with pytest.raises(ConfigError, match="train.lr differ"):
        check_reuse(other, out)
    argv = ["compare", "--algorithms", "fedit", "--seeds", "1", "--out", str(out), "--set", "train.lr=0.5"]
    assert main([*argv, "--set", f"model.name={tiny_cfg.model.name}", "--plan"]) == 2  # before the plan
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose another --out" in err


# ---------------------------------------------------------------------------------------------------------------
# The CLI: defaults, the plan, bad values (one line, exit 2, nothing written), --audit's one [privacy].


def _fake_experiment(monkeypatch):
    import fedpit.compare

    seen = {}

    def fake(cells, out, ev, **kw):
        seen.update(cells=cells, **kw)
        return out / "results.json"

    monkeypatch.setattr(fedpit.compare, "run_experiment", fake)
    return seen


NO_CURVES = ["--server-lrs", "", "--local-steps", "", "--epsilons", ""]


def test_frontier_cli_turns_the_attack_on_and_adds_the_backbone(tmp_path, monkeypatch, capsys):
    seen = _fake_experiment(monkeypatch)
    argv = ["frontier", "--algorithms", "fedit,fedpit-mix", "--betas", "0,1", "--seeds", "1,2", "--out", str(tmp_path)]
    assert main(argv + NO_CURVES) == 0
    assert seen["backbone"] is True and seen["audit"] is False and seen["command"].startswith("fedpit frontier")
    cells = [(c.algorithm, c.seed, c.fedpit.beta if label else None) for label, c in seen["cells"]]
    assert cells == [("fedit", 1, None), ("fedpit-mix", 1, 0.0), ("fedpit-mix", 1, 1.0)] + [
        ("fedit", 2, None),
        ("fedpit-mix", 2, 0.0),
        ("fedpit-mix", 2, 1.0),
    ]
    assert all(c.eval.extraction_every_round for _, c in seen["cells"])
    assert capsys.readouterr().out.startswith("fedpit frontier: 6 runs, about ")  # the plan, before the runs
    assert (
        main(["frontier", "--set", "eval.extraction_every_round=false", "--out", str(tmp_path / "x")] + NO_CURVES) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.extraction_every_round" in err


def test_frontier_cli_defaults_and_the_plan_option(tmp_path, monkeypatch, capsys, fedit_dp):
    seen = _fake_experiment(monkeypatch)
    out = tmp_path / "exp"
    assert main(["frontier", "--plan", "--out", str(out)]) == 0
    assert not seen and not out.exists()  # printed, nothing run or written
    text = capsys.readouterr().out
    # fedit, fedpit, locit and fedpit-mix at 4 betas; 3 turned-down, 3 fewer-steps and 4 DP points; 3 seeds each
    assert text.startswith("fedpit frontier: 51 runs, about ") and "dp.target_epsilon=1000" in text
    argv = ["frontier", "--seeds", "1,2,3", "--sweep-seeds", "1", "--deciding", "fedit,fedpit.beta=0.6", "--plan"]
    assert main(argv) == 0
    text = capsys.readouterr().out  # 2 deciding cells x 3 seeds, the other 15 x 1
    assert text.startswith("fedpit frontier: 21 runs, about ") and "fedpit-mix fedpit.beta=0.6" in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--server-lrs", "0.5,1.5"], "--server-lrs '0.5,1.5': 1.5 is not in (0, 1)"),
        (["--local-steps", "x"], "--local-steps 'x': 'x' is not a number"),
        (["--epsilons", "-1"], "--epsilons '-1': -1 is not a positive epsilon"),
        (["--sweep-seeds", "a"], "--sweep-seeds expects integers"),
        (["--sweep-seeds", "1,1"], "--sweep-seeds lists 1 more than once"),
        (["--deciding", "fedpit.beta=0.9"], "--deciding: 'fedpit.beta=0.9' is not a cell of this frontier"),
        (["--betas", "abc"], "--betas 'abc'"),
        (["--teacher-mixes", "0.5,1.2"], "--teacher-mixes '0.5,1.2': fedpit.teacher_mix"),
        (["--teacher-accumulate", "false"], "--teacher-accumulate 'false': 'false' is not 'true'"),
    ],
)
def test_frontier_cli_bad_values_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, fedit_dp, argv, words):
    out = tmp_path / "exp"
    assert main(["frontier", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert not out.exists()


def test_audit_needs_one_privacy_setting_for_every_run(tiny_cfg, tmp_path, capsys):
    cfg = replace(tiny_cfg, privacy=replace(tiny_cfg.privacy, holdout=0.25))
    cells = frontier_grid(cfg, ["fedit"], [1], audit=True)
    check_audit(cells, tmp_path)  # fine
    argv = ["sweep", "--audit", "--set-values", "privacy.holdout=0.2,0.3", "--algorithms", "fedit", "--seeds", "1"]
    assert main(argv + ["--out", str(tmp_path / "s"), "--set", f"model.name={tiny_cfg.model.name}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--audit: every run must be attacked with the same [privacy]" in err
    assert "privacy.holdout = 0.3 against 0.2" in err and not (tmp_path / "s").exists()
    small = replace(cfg, data=replace(cfg.data, limit=20))  # 5 non-members: too few
    with pytest.raises(ConfigError, match="privacy.holdout: 0.25 of the 20 examples"):
        check_audit(frontier_grid(small, ["fedit"], [1], audit=True), tmp_path)
    crowded = replace(cfg, data=replace(cfg.data, limit=48), partition=replace(cfg.partition, num_clients=4))
    check_audit(frontier_grid(crowded, ["fedit"], [1], audit=True), tmp_path)  # no private models: pooled members
    with pytest.raises(ConfigError, match=r"holds \d members; membership inference on its private model \(fedpit\)"):
        check_audit(frontier_grid(crowded, ["fedpit"], [1], audit=True), tmp_path)  # 36 members over 4 clients
    run = tmp_path / "runs" / cells[0][1].run_name
    run.mkdir(parents=True)
    (run / "config.toml").write_text("[privacy]\nholdout = 0.1\n")  # an earlier run in OUT, other non-members
    with pytest.raises(ConfigError, match="made with privacy.holdout = 0.1 against 0.25"):
        check_audit(cells, tmp_path)


def _mia(auc):
    return {
        "auc": auc,
        "auc_ci": [auc - 0.1, auc + 0.1],
        "tpr_at_10pct_fpr": auc / 5,
        "n_members": 60,
        "n_nonmembers": 20,
    }


def _can(k, mean, top):
    return {"k": k, "repeats": 2, "space_bits": 9.97, "exposure_mean": mean, "exposure_max": top}


def _ext(rouge, excess):
    out = {"n": 3, "rouge_l": rouge, "rouge_l_ci": [0, 1]}
    return out | ({"excess_rouge_l": excess, "excess_ci": [excess - 0.01, excess + 0.01]} if excess is not None else {})


def _audit_json():
    """The shape fedpit.audit.run.audit writes (tests/test_audit_run.py), with round numbers."""
    mia, can, ext = _mia, _can, _ext
    return {
        "models": ["shared", "client_0", "client_1", "backbone"],
        "mia": {
            "shared": {"loss": mia(0.6), "ref": mia(0.7), "zlib": mia(0.55)},
            "client_0": {"loss": mia(0.8), "ref": mia(0.9), "zlib": mia(0.7)},
            "client_1": {"loss": mia(0.6), "ref": mia(0.7), "zlib": mia(0.5)},
            "backbone": {"loss": mia(0.52), "zlib": mia(0.5)},
        },
        "canaries": {
            "shared": can(2, 4.0, 6.0),
            "client_0": can(1, 9.0, 9.0) | {"control_k": 1, "control_exposure_mean": 1.0},
            "client_1": can(1, 3.0, 3.0) | {"control_k": 1, "control_exposure_mean": 2.0},
            "backbone": can(2, 0.5, 0.8),
        },
        "extraction": {
            "shared": ext(0.2, 0.05),
            "client_0": ext(0.3, 0.1),
            "client_1": ext(0.1, 0.0),
            "backbone": ext(0.15, None),
        },
        "leaks": [{"canary": 1}],
        "seconds": 12.5,
    }


def test_audit_fields_of_the_shared_private_and_bare_rows():
    a = _audit_json()
    shared = audit_fields(a, "shared")
    assert shared["mia_ref_auc"] == 0.7 and shared["mia_ref_auc_lo"] == pytest.approx(0.6)
    assert shared["mia_loss_tpr10"] == pytest.approx(0.12) and shared["mia_n_members"] == 60
    assert (shared["canary_exposure_mean"], shared["canary_exposure_max"], shared["canary_k"]) == (4.0, 6.0, 2)
    assert shared["audit_excess_rouge_l"] == 0.05 and shared["audit_excess_hi"] == pytest.approx(0.06)
    assert shared["audit_leaks"] == 1 and shared["audit_s"] == 12.5
    private = audit_fields(a, "private")  # the mean over the clients' models; exposure over all their canaries
    assert private["mia_ref_auc"] == pytest.approx(0.8) and "mia_ref_auc_lo" not in private
    assert (private["canary_exposure_mean"], private["canary_exposure_max"], private["canary_k"]) == (6.0, 9.0, 2)
    assert private["canary_control_exposure_mean"] == 1.5 and private["audit_excess_rouge_l"] == pytest.approx(0.05)
    bare = audit_fields(a, "bare")  # the ref score is 0 on every example: AUC 0.5; no excess over itself
    assert bare["mia_ref_auc"] == 0.5 and bare["mia_loss_auc"] == 0.52 and bare["audit_excess_rouge_l"] == 0.0
    assert bare["audit_rouge_l"] == 0.15 and bare["canary_exposure_mean"] == 0.5


def test_frontier_with_audit_one_round_on_the_tiny_model(tiny_cfg, tmp_path, capsys):
    """FedIT audited (one [privacy] on the base config); the bare backbone's row from the run's audit; the report's
    three privacy measures; a rerun reuses the run, its evaluations and its audit."""
    sets = ["federation.rounds=1", "privacy.holdout=0.25", "privacy.canaries=3", "privacy.canary_repeats=2"]
    sets += ["privacy.canary_digits=3", "privacy.bootstrap=200", "eval.extraction_n=3"]
    sets += ["eval.extraction_max_new_tokens=3", f"model.cache_dir={tmp_path / 'cache'}"]
    sets += ["data.limit=52"]  # 39 members (13 a client), 13 non-members
    sets += [f"model.name={tiny_cfg.model.name}", "model.dtype=fp32", "model.max_seq_len=96", "lora.r=4"]
    sets += ["train.local_steps=2", "train.batch_size=2", "eval.max_examples=4"]
    out = tmp_path / "exp"
    argv = ["frontier", "--audit", "--algorithms", "fedit", "--seeds", "1", "--out", str(out)]
    argv += ["--server-lrs", "", "--local-steps", "", "--epsilons", "", "--limit", "2", "--max-new-tokens", "3"]
    argv += [x for s in sets for x in ("--set", s)]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("fedpit frontier: 1 runs, about ")
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["audit"] is True
    assert [(r["algorithm"], r["model"]) for r in data["records"]] == [("fedit", "shared"), ("backbone", "bare")]
    fedit, bare = data["records"]
    assert {"mia_ref_auc", "mia_ref_auc_lo", "canary_exposure_mean", "audit_excess_rouge_l", "audit_leaks"} <= set(
        fedit
    )
    assert fedit["mia_n_nonmembers"] == 13 and fedit["canary_k"] == 3 and "leak_rouge_l" not in fedit  # no run attack
    audit = json.loads((out / "runs" / "fedit-s1" / "audit.json").read_text())
    assert fedit["mia_ref_auc"] == audit["mia"]["shared"]["ref"]["auc"]
    assert bare["mia_ref_auc"] == 0.5 and bare["audit_excess_rouge_l"] == 0.0 and "audit_s" not in bare
    assert bare["canary_exposure_mean"] == audit["canaries"]["backbone"]["exposure_mean"]
    assert bare["mia_loss_auc"] == audit["mia"]["backbone"]["loss"]["auc"] and {"rouge_l", "cosine"} <= set(bare)
    md = (out / "report.md").read_text()
    for title in ("membership inference AUC", "canary exposure (mean)", "extraction Rouge-L above the backbone"):
        assert f"### {title}" in md
    stamp = (out / "runs" / "fedit-s1" / "audit.json").stat().st_mtime_ns
    assert main(argv) == 0  # a rerun reuses the run, its evaluations and its audit
    assert (out / "runs" / "fedit-s1" / "audit.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["records"] == data["records"]


# ---------------------------------------------------------------------------------------------------------------
# fedpit report --benchmarks


def _score(acc, n, norm=None, **kw):
    return (
        {"acc": acc, "acc_stderr": 0.02, "n": n, "seconds": 1.0, "cached": False}
        | ({"acc_norm": norm} if norm is not None else {})
        | kw
    )


def _bench_results(folder):
    """The shape fedpit.mcq.evaluate_models writes (see tests/test_mcq.py)."""
    res = {
        "protocol": "lm-eval",
        "label": "lm-evaluation-harness, log-likelihood multiple choice, zero-shot",
        "model": "/models/SmolLM2-135M",
        "dtype": "bfloat16",
        "limit": 0,
        "batch_size": 8,
        "benchmarks": {
            "pubmedqa": {"chance": 1 / 3, "majority": 0.552, "majority_class": "yes", "n": 500, "note": "test"},
            "medqa": {"chance": 0.25, "majority": 0.277, "majority_class": "A", "n": 1273, "note": "USMLE"},
        },
        "models": {
            "backbone": {
                "adapters": [None],
                "scores": {"pubmedqa": _score(0.432, 500, 0.564), "medqa": _score(0.277, 1273)},
            },
            "fedit shared": {
                "adapters": ["r/final"],
                "scores": {"pubmedqa": _score(0.45, 500), "medqa": _score(0.3, 1273)},
            },
            "fedpit private": {
                "adapters": ["c0", "c1", "c2"],
                "scores": {
                    "pubmedqa": _score(0.44, 500, adapters=3, per_adapter_acc=[0.43, 0.44, 0.45]),
                    "medqa": _score(0.26, 1273, adapters=3, per_adapter_acc=[0.25, 0.26, 0.27]),
                },
            },
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(res))
    return res


def test_noise_threshold_comes_from_n():
    assert noise_points(500) == pytest.approx(4.38, abs=0.01)  # "about 4 points" at n = 500
    assert noise_points(100) == pytest.approx(9.80, abs=0.01)
    assert noise_points(2000) == pytest.approx(noise_points(500) / 2)


def test_report_benchmarks_of_an_experiment(tmp_path, capsys):
    exp = tmp_path / "exp"
    _bench_results(exp / "benchmarks")
    (exp / "results.json").write_text(json.dumps({"records": [_rec("fedit", 1, rouge_l=0.2)]}))
    assert main(["report", str(exp), "--benchmarks"]) == 0
    assert (exp / "report.md").read_text() == write_report(exp)["md"].read_text()  # found without asking, too
    md = (exp / "report.md").read_text()
    assert "| fedit | shared | 1 | 0.200 |" in md  # the experiment's own table stays
    sec = md[md.index("## Multiple-choice benchmarks") :]
    assert "Protocol: lm-evaluation-harness, log-likelihood multiple choice, zero-shot." in sec
    pubmed = sec[sec.index("### pubmedqa (n = 500)") : sec.index("### medqa")]
    assert "| chance | 33.3 | - | - | 500 |" in pubmed
    assert "| majority class (yes) | 55.2 | - | - | 500 |" in pubmed
    assert "| backbone (untuned) | 43.2 | [38.9, 47.6] | 56.4 | 500 |" in pubmed  # Wilson interval, as in the README
    assert "| fedit shared | 45.0 | [40.7, 49.4] | - | 500 |" in pubmed
    assert "| fedpit private (mean of 3 adapters: 43.0 / 44.0 / 45.0) | 44.0 |" in pubmed
    assert "With n = 500, a difference below 4.4 points is noise" in pubmed
    medqa = sec[sec.index("### medqa (n = 1273)") :]
    assert "| majority class (A) | 27.7 |" in medqa and "below 2.7 points is noise" in medqa
    assert "CareQA" in sec
    assert "<h3>pubmedqa (n = 500)</h3>" in (exp / "report.html").read_text()
    assert main(["report", str(exp / "results.json"), "--benchmarks", "medqa"]) == 0
    md = (exp / "report.md").read_text()
    assert "### medqa" in md and "### pubmedqa" not in md


def test_report_benchmarks_of_an_evaluate_folder(tmp_path, capsys):
    folder = tmp_path / "eval-benchmarks"
    _bench_results(folder)
    assert main(["report", str(folder), "--benchmarks"]) == 0
    md = (folder / "report.md").read_text()
    assert md.startswith("# fedpit report: eval-benchmarks") and "### pubmedqa (n = 500)" in md
    assert "Privacy-utility" not in md and "| method |" not in md
    assert main(["report", str(folder)]) == 2  # no records: says how to report it
    assert "--benchmarks" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda r: r["models"]["fedit shared"]["scores"]["medqa"].update(acc=1.5),
            "model fedit shared, medqa: field 'acc'",
        ),
        (lambda r: r["benchmarks"]["pubmedqa"].pop("n"), "benchmark pubmedqa: field 'n'"),
        (lambda r: r.update(models=[]), "field 'models'"),
    ],
)
def test_bad_benchmark_results_are_one_line_exit_2(tmp_path, capsys, change, expected):
    folder = tmp_path / "b"
    res = _bench_results(folder)
    change(res)
    (folder / "results.json").write_text(json.dumps(res))
    assert main(["report", str(folder), "--benchmarks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(folder / "results.json") in err
    assert not (folder / "report.md").exists()


def test_report_benchmarks_missing_or_unknown(tmp_path, capsys):
    exp = tmp_path / "exp"
    (exp).mkdir()
    (exp / "results.json").write_text(json.dumps({"records": [_rec("fedit", 1, rouge_l=0.2)]}))
    assert main(["report", str(exp)]) == 0
    assert "benchmarks" not in (exp / "report.md").read_text()  # none saved: no section
    assert main(["report", str(exp), "--benchmarks"]) == 2  # asked for: an error
    assert "no benchmark results here" in capsys.readouterr().err
    _bench_results(exp / "benchmarks")
    assert main(["report", str(exp), "--benchmarks", "medmcqa"]) == 2
    assert "medmcqa not evaluated here (saved: pubmedqa, medqa)" in capsys.readouterr().err
    assert main(["report", str(exp), "--benchmarks", "careqa"]) == 2
    assert "careqa" in capsys.readouterr().err


def test_the_frontier_results_file_carries_the_reports_verdicts(tmp_path):
    """benchmarks/frontier_results.py writes what the report judged, per privacy measure, for the docs to quote."""
    mod = load("frontier_results")
    src = _audited_results(tmp_path)
    assert mod.main([str(src), "--out-dir", str(tmp_path / "out"), "--note", "constructed"]) == 0
    doc = json.loads((tmp_path / "out" / "frontier.json").read_text())
    # the same frontier on other data goes to a results file of its own, beside the demo's
    assert mod.main([str(src), "--out-dir", str(tmp_path / "out"), "--name", "frontier-medical", "--title", "MM"]) == 0
    other = json.loads((tmp_path / "out" / "frontier-medical.json").read_text())
    assert other["title"] == "MM" and other["values"] == doc["values"] and doc["title"] != "MM"
    rows = frontier_rows(json.loads(src.read_text())["records"])
    for pkey, short in (("mia_ref_auc", "mia"), ("canary_exposure_mean", "exposure")):
        judged = {
            r["label"]: overall(list(v.values())) for r, v in frontier_verdicts(rows, pkey, "reference_loss", False)
        }
        table = {r["point"]: r["overall"] for r in doc["tables"][f"verdicts_{short}"]["rows"]}
        assert table == judged
    assert doc["values"]["verdict_exposure_fedpit_mix_beta_0_5_shared"]["value"] == "dominated"
    margins = 0  # each judged point's held-out loss against the curve point it is read against (positive: better)
    for r, v in frontier_verdicts(rows, "mia_ref_auc", "reference_loss", False):
        for name, judged in v.items():
            if judged.against is not None:
                key = f"margin_mia_{mod.slug(r['label'])}_vs_{mod.slug(name)}"
                assert doc["values"][key]["value"] == pytest.approx(judged.against.y - r["reference_loss"])
                margins += 1
    assert margins > 0
    by = {r["label"]: r["reference_loss"] for r in rows}
    share = (by["bare backbone"] - by["fedpit shared"]) / (by["bare backbone"] - by["fedit shared"])
    assert doc["values"]["gap_fedpit_shared"]["value"] == pytest.approx(share)
    assert doc["values"]["loss_fedit_shared"]["value"] == pytest.approx(2.70)
    assert doc["values"]["status"]["value"].startswith("fedit shared, ") and "constructed" in doc["notes"]
    fedit = next(r for r in doc["tables"]["points"]["rows"] if r["point"] == "fedit shared")
    assert (
        fedit["seeds"] == "1,2,3" and fedit["mia_ref_auc"]["format"].format(**fedit["mia_ref_auc"]) == "0.700 ± 0.010"
    )


def test_the_frontier_results_file_gives_each_points_share_of_the_gap_on_loss_and_cosine(tmp_path):
    """The share of the backbone -> FedIT gap a point closes, on the held-out loss (falls) and the MiniLM cosine
    (rises), a point worse than the backbone getting a negative share; and its verdict and margin on each utility,
    which can disagree (Medical Meadow's loss barely moves under FedIT, its cosine does)."""
    mod = load("frontier_results")
    recs = [
        _rec("fedit", 1, reference_loss=1.77, cosine=0.675, mia_ref_auc=0.56),
        _rec("fedit", 1, setting="federation.server_lr=0.5", reference_loss=1.775, cosine=0.63, mia_ref_auc=0.55),
        _rec("fedpit", 1, reference_loss=1.80, cosine=0.647, mia_ref_auc=0.52),
        _rec("backbone", 1, "bare", reference_loss=1.79, cosine=0.605, mia_ref_auc=0.5),
    ]
    assert mod.main([str(_write(tmp_path, recs)), "--out-dir", str(tmp_path / "out")]) == 0
    v = {k: x["value"] for k, x in json.loads((tmp_path / "out" / "frontier.json").read_text())["values"].items()}
    assert v["gap_fedpit_shared"] == pytest.approx(-0.5) and v["gap_cosine_fedpit_shared"] == pytest.approx(0.6)
    assert v["cosine_fedpit_shared"] == pytest.approx(0.647) and "gap_fedit_shared" not in v
    # at AUC 0.52 the turned-down line (backbone -> eta 0.5) reads loss 1.784 and cosine 0.615
    assert v["verdict_mia_fedpit_shared"] == "dominated" and v["verdict_cosine_mia_fedpit_shared"] == "dominates"
    assert v["margin_mia_fedpit_shared_vs_fedit_turned_down"] == pytest.approx(1.79 - 0.015 * 0.4 - 1.80)
    assert v["margin_cosine_mia_fedpit_shared_vs_fedit_turned_down"] == pytest.approx(0.647 - (0.605 + 0.025 * 0.4))


def test_the_frontier_results_file_reads_fedits_audits_seed_by_seed(tmp_path):
    """FedIT's audit.json per seed: the separation figures the privacy docs quote (intervals, not means)."""
    mod = load("frontier_results")
    recs = []
    for seed, (lo, bb_lo) in enumerate(((0.61, 0.39), (0.45, 0.52)), 1):
        run = tmp_path / f"fedit-s{seed}"
        run.mkdir()
        auc = lambda a, lo_, hi: {"auc": a, "auc_ci": [lo_, hi], "tpr_at_10pct_fpr": 0.1}  # noqa: E731
        audit = {
            "mia": {"shared": {"ref": auc(0.7, lo, 0.8)}, "backbone": {"loss": auc(0.5, bb_lo, 0.6)}},
            "canaries": {"shared": {"k": 6, "exposure_mean": 2.0, "exposure_max": 4.0}},
            "extraction": {},
            "leaks": [],
        }
        (run / "audit.json").write_text(json.dumps(audit))
        recs.append(_rec("fedit", seed, reference_loss=2.7, mia_ref_auc=0.7, run_dir=str(run), wall_s=100, audit_s=90))
    assert mod.main([str(_write(tmp_path, recs)), "--out-dir", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "frontier.json").read_text())
    v = {k: x["value"] for k, x in doc["values"].items()}
    assert v["fedit_seeds"] == 2 and v["fedit_ref_excludes_chance"] == 1 and v["backbone_covers_chance"] == 1
    assert v["auc_ci_fedit_shared_s2"] == "[0.450, 0.800]" and v["fedit_exposure_max"] == 4.0
    rows = doc["tables"]["fedit_by_seed"]["rows"]
    assert [r["seed"] for r in rows] == [1, 2] and rows[0]["wall_s"] == 100 and rows[0]["audit_s"] == 90
    assert v["run_hours"] == pytest.approx(2 * 190 / 3600)  # each run's training and audit, once per run


def test_the_frontier_results_file_refuses_a_bad_results_file_in_one_line(tmp_path, capsys):
    mod = load("frontier_results")
    bad = tmp_path / "results.json"
    for text, words in (("{not json", "results.json"), ('{"records": [{"algorithm": 3}]}', "record 1")):
        bad.write_text(text)
        assert mod.main([str(bad), "--out-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err
    assert mod.main([str(tmp_path / "missing.json"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert mod.main([str(_audited_results(tmp_path)), "--out-dir", str(tmp_path / "out"), "--name", "../x"]) == 2
    assert "--name '../x'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written
    # the teacher's points are named by their teacher_mix, as fedpit-mix's by beta
    label = _point_label("fedpit", "fedpit.teacher_mix=0.5", "shared")
    assert label == "fedpit teacher_mix=0.5 shared" and mod.slug(label) == "fedpit_teacher_mix_0_5_shared"
    label = _point_label("fedpit", "selfgen.accumulate=true", "private")
    assert label == "fedpit teacher accumulating private" and mod.slug(label) == "fedpit_teacher_accumulating_private"
