"""Automatic distillation: the no-teacher baseline and its verdict, tune (Optuna) and student search, on digits."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.auto.baseline import gain_verdict
from edgekd.auto.commands import run_stages
from edgekd.auto.search import candidates_with_recipe_student, expand_space, pareto
from edgekd.auto.stats import paired_bootstrap, paired_se_pt, spearman
from edgekd.config import load_recipe, parse_recipe
from edgekd.stages import require_record

RECIPE = {
    "name": "auto", "seed": 0,
    "data": {"dataset": "digits", "batch_size": 64, "val_fraction": 0.2},
    "teacher": {"model": "tiny_cnn", "kwargs": {"width": 8}, "train": {"epochs": 1, "lr": 0.01}},
    "student": {"model": "tiny_cnn", "kwargs": {"width": 4, "depth": 2}},
    "distill": {"train": {"epochs": 1, "lr": 0.01}},
    "tune": {"trials": 3, "budget_s": 60, "proxy_epochs": 0.5, "proxy_train": 200, "pruner": "none"},
    "search": {"targets": ["cpu-local"], "budget_ms": {"cpu-local": 1.0}, "proxy_epochs": 0.5, "proxy_train": 200,
               "measure_local": False,
               "space": [{"model": "tiny_cnn", "kwargs": {"width": [4, 8], "depth": [2]}}]},
    "quantize": {"enabled": False},
    "bundle": {"enabled": False},
}


def recipe(**changes):
    import copy

    data = copy.deepcopy(RECIPE)
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return parse_recipe(data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run directory whose teacher every test reuses (the teacher section never changes)."""
    return tmp_path_factory.mktemp("auto") / "run"


# ------------------------------------------------------------------------------------- the verdict's numbers


def test_paired_bootstrap_matches_the_hand_computed_paired_error():
    a = np.ones(400, bool)                      # A right on every image
    b = np.ones(400, bool)
    b[:40] = False                              # B wrong on 40 of them: gain exactly 10 pt
    b[40:50] = True
    a[50:60] = False                            # and A wrong on 10 that B gets: gain 7.5 pt
    stats = paired_bootstrap(a, b, n_boot=4000, seed=0)
    assert stats["gain_pt"] == pytest.approx(7.5)
    # by hand: p10 = 40/400, p01 = 10/400, SE = sqrt((p10 + p01 - d^2) / n)
    hand = math.sqrt((0.1 + 0.025 - 0.075 ** 2) / 400) * 100
    assert paired_se_pt(a, b) == pytest.approx(hand)
    assert stats["se_images_pt"] == pytest.approx(hand, rel=0.06)
    assert stats["pm_pt"] == pytest.approx(1.959964 * stats["se_images_pt"])
    lo, hi = stats["ci95_pt"]
    assert lo < 7.5 < hi and hi - lo == pytest.approx(2 * 1.96 * hand, rel=0.12)
    assert stats["seeds"] == 1 and stats["se_seeds_pt"] is None


def test_paired_bootstrap_adds_the_seed_spread():
    rng = np.random.default_rng(1)
    a = rng.random((3, 300)) < 0.9
    b = rng.random((3, 300)) < 0.85
    stats = paired_bootstrap(a, b, n_boot=500)
    per_seed = (a.mean(1) - b.mean(1)) * 100
    assert stats["per_seed_pt"] == pytest.approx(list(per_seed))
    assert stats["gain_pt"] == pytest.approx(per_seed.mean())
    assert stats["se_seeds_pt"] == pytest.approx(per_seed.std(ddof=1) / math.sqrt(3))
    assert stats["pm_pt"] == pytest.approx(1.959964 * math.hypot(stats["se_images_pt"], stats["se_seeds_pt"]))
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, b[:, :10])


def test_the_verdict_says_gained_lost_or_noise_and_what_to_try():
    m = {"gain_pt": 1.2, "pm_pt": 0.4, "images": 1000, "seeds": 1, "kd_accuracy": 0.9, "baseline_accuracy": 0.888,
         "teacher_accuracy": 0.895}
    assert gain_verdict(m).startswith("Distillation gained +1.20 ± 0.40 pt over the same student without the teacher")
    lost = gain_verdict({**m, "gain_pt": -1.0})
    assert lost.startswith("Distillation lost 1.00 ± 0.40 pt") and "stronger teacher" in lost and "Try" in lost
    assert "within the noise" in gain_verdict({**m, "gain_pt": 0.2})


def test_spearman_and_the_search_space_and_front():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    space = expand_space([{"model": "tiny_cnn", "kwargs": {"width": [4, 8, 16], "depth": [2, 3]}}], limit=100)
    assert len(space) == 6 and {"model": "tiny_cnn", "kwargs": {"width": 8, "depth": 3}} in space
    assert len(expand_space([{"model": "tiny_cnn", "kwargs": {"width": list(range(4, 40))}}], limit=5)) == 5
    pts = [{"name": n, "val_accuracy": acc, "latency": {"t": {"ms": ms}}}
           for n, acc, ms in (("a", 0.8, 1.0), ("b", 0.9, 2.0), ("c", 0.85, 3.0), ("d", 0.95, 4.0))]
    assert pareto(pts, "t") == ["a", "b", "d"]


# ----------------------------------------------------------------------------------- stages on tiny digits


def test_baseline_stage_and_kd_gain_against_a_bootstrap_of_the_saved_models(run_dir):
    from edgekd.models import load_model_file

    r = recipe()
    run_stages(r, ["teacher", "baseline", "distill", "kd_gain"], run_dir=run_dir, progress=False, log=lambda s: None)
    base = require_record(run_dir, "baseline").metrics
    assert base["ran"] and base["losses"] == [{"name": "ce", "weight": 1.0}]
    assert base["data_split"]["val"] > 0 and base["data_split"]["train"] + base["data_split"]["val"] == 1438
    gain = require_record(run_dir, "kd_gain").metrics
    from edgekd.data import dataset_from_config

    ds = dataset_from_config(r.data, r.seed)
    kd, _ = load_model_file(run_dir / "distill" / "student.pt")
    ce, _ = load_model_file(run_dir / "baseline" / "student.pt")
    with torch.no_grad():
        kd_ok = (kd.eval()(ds.x_test).argmax(-1) == ds.y_test).numpy()
        ce_ok = (ce.eval()(ds.x_test).argmax(-1) == ds.y_test).numpy()
    by_hand = paired_bootstrap(kd_ok, ce_ok, seed=r.seed)
    assert gain["gain_pt"] == pytest.approx((kd_ok.mean() - ce_ok.mean()) * 100)
    assert gain["pm_pt"] == pytest.approx(by_hand["pm_pt"]) and gain["ci95_pt"] == pytest.approx(by_hand["ci95_pt"])
    assert gain["verdict"].startswith("Distillation ")
    # the baseline does not depend on the KD losses: changing them re-runs distill, not the baseline
    logs: list[str] = []
    r2 = recipe(**{"distill.losses": [{"name": "ce", "weight": 0.5}, {"name": "kd_soft", "weight": 0.5}]})
    run_stages(r2, ["teacher", "baseline"], run_dir=run_dir, progress=False, log=logs.append)
    assert "baseline: up to date, skipped" in logs


def test_baseline_auto_skips_an_expensive_student_and_the_report_says_so(run_dir, monkeypatch):
    import edgekd.auto.baseline as baseline
    from edgekd.auto.report import auto_results, auto_verdicts
    from edgekd.runs import load_run

    monkeypatch.setattr(baseline, "AUTO_MAX_TFLOP", 0.0)
    r = recipe(**{"distill.train.epochs": 0.5})
    run_stages(r, ["teacher", "baseline"], run_dir=run_dir, progress=False, log=lambda s: None)
    m = require_record(run_dir, "baseline").metrics
    assert m["ran"] is False and "distill.baseline: true" in m["reason"]
    verdicts = auto_verdicts({"auto": auto_results(load_run(run_dir))})
    assert verdicts[0].startswith("No no-teacher baseline was trained")
    assert not parse_recipe({**RECIPE, "distill": {"baseline": False}}).distill.baseline


def test_tune_with_three_trials_records_and_applies_its_choice(run_dir):
    r = recipe(**{"distill.auto": True})
    run_stages(r, ["teacher", "tune", "distill"], run_dir=run_dir, progress=False, log=lambda s: None)
    t = require_record(run_dir, "tune").metrics
    names = [row["name"] for row in t["trials"]]
    assert names[:2] == ["recipe", "ce"] and len([n for n in names if n.startswith("trial")]) == 3
    assert all(0 <= row["val_accuracy"] <= 1 for row in t["trials"] if row["val_accuracy"] is not None)
    assert t["split"]["val"] > 0 and t["sampler"] == "TPE"
    chosen = t["chosen"]["losses"]
    assert require_record(run_dir, "distill").metrics["losses"] == chosen
    # the choice is made among full-budget re-runs: recipe, CE and the 2 best distinct proxy runs
    confirmed = t["confirm"]
    assert [c["name"] for c in confirmed][:2] == ["recipe", "ce"] and 3 <= len(confirmed) <= 4
    assert t["chosen"]["source"] in [c["name"] for c in confirmed] and t["chosen"]["stage"].startswith("confirmed")
    best = max(c["val_accuracy"] for c in confirmed)
    assert t["chosen"]["val_accuracy"] >= best - t["chosen"]["val_se"] - 1e-12
    proxy = {row["name"]: row["val_accuracy"] for row in t["trials"]}
    assert all(c["proxy_val_accuracy"] == proxy[c["name"]] for c in confirmed)


def test_search_returns_a_front_and_writes_a_recipe_that_validates(run_dir, tmp_path):
    from edgekd.auto.commands import search

    out = tmp_path / "chosen.yaml"
    res = search(recipe(), targets=["cpu-local"], budget_ms=[1.0], out=out, run_dir=run_dir, progress=False,
                 log=lambda s: None)
    assert res["fronts"]["cpu-local"] and set(res["fronts"]["cpu-local"]) <= {c["name"] for c in res["candidates"]}
    assert all(c["latency"]["cpu-local"]["predicted_ms"] > 0 for c in res["candidates"])
    chosen = load_recipe(out)
    assert chosen.student.model == res["chosen"]["model"] and chosen.student.kwargs == res["chosen"]["kwargs"]
    from edgekd.validate import dry_run

    dry_run(chosen)
    with pytest.raises(Exception, match="one --budget-ms per --target"):
        search(recipe(), targets=["cpu-local", "pixel-8"], budget_ms=[1.0], run_dir=run_dir, progress=False)


def test_the_report_leads_with_the_baseline_verdict_and_shows_trials_and_fronts(run_dir):
    from edgekd.report.build import build_report

    run_stages(recipe(), ["teacher", "baseline", "distill", "kd_gain"], run_dir=run_dir, progress=False,
               log=lambda s: None)
    paths = build_report(run_dir)
    import json

    results = json.loads(paths.results.read_text())
    assert results["summary"][0].startswith("Distillation ")
    assert results["auto"]["gain"]["images"] == 359 and "tune" in results["auto"] and "search" in results["auto"]
    md = paths.markdown.read_text()
    for title in ("Distillation vs the same student without the teacher", "KD settings tried (tune)",
                  "Student search on cpu-local"):
        assert f"## {title}" in md
    assert "search_pareto" in paths.plots


def test_the_verdict_when_tune_chose_no_teacher():
    m = {"gain_pt": 0.0, "pm_pt": 0.0, "images": 100, "seeds": 1, "kd_accuracy": 0.9, "baseline_accuracy": 0.9,
         "kd_losses": [{"name": "ce", "weight": 1.0}]}
    assert gain_verdict(m).startswith("The student was trained without the teacher")


def test_a_gain_verdict_of_students_re_trained_since_is_called_out_of_date(run_dir):
    from edgekd.auto.report import auto_results, auto_verdicts
    from edgekd.runs import load_run

    run_stages(recipe(), ["teacher", "baseline", "distill", "kd_gain"], run_dir=run_dir, progress=False,
               log=lambda s: None)
    run_stages(recipe(**{"distill.train.lr": 0.02}), ["teacher", "baseline", "distill"], run_dir=run_dir,
               progress=False, log=lambda s: None)
    assert auto_verdicts({"auto": auto_results(load_run(run_dir))})[0].startswith(
        "The no-teacher comparison is out of date")


def test_the_tune_command_prints_the_trials_and_writes_the_tuned_recipe(run_dir, tmp_path):
    import yaml
    from click.testing import CliRunner

    from edgekd.cli import main

    src, out = tmp_path / "r.yaml", tmp_path / "tuned.yaml"
    src.write_text(yaml.safe_dump(RECIPE))
    res = CliRunner().invoke(main, ["tune", str(src), "--trials", "1", "--budget-s", "30", "--run-dir", str(run_dir),
                                    "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "recipe" in res.output and "trial 0" in res.output and "chosen:" in res.output
    tuned = load_recipe(out)
    assert tuned.distill.auto is False
    assert tuned.distill.losses == require_record(run_dir, "tune").metrics["chosen"]["losses"]
    bad = CliRunner().invoke(main, ["search", str(src), "--target", "cpu-local", "--budget-ms", "1",
                                    "--budget-ms", "2", "--run-dir", str(run_dir)])
    assert bad.exit_code == 2 and "one --budget-ms per --target" in bad.output


def test_tune_records_a_diverging_trial_as_failed_and_keeps_the_recipe_inside_the_noise(monkeypatch):
    import edgekd.auto.tune as tune
    from edgekd.auto.proxy import ProxyResult
    from edgekd.data import load_dataset
    from edgekd.train import NonFiniteLossError

    ds = load_dataset("digits", val_fraction=0.2)

    def fake_proxy(model, ds, idx, terms, cfg, **kw):
        names = [t["name"] for t in terms]
        if "dkd" in names:
            raise NonFiniteLossError("loss part 'dkd' is nan at step 3")
        acc = {"kd_soft": 0.80, "dist": 0.81}.get(names[-1], 0.70)   # dist beats kd_soft by less than one SE
        return ProxyResult(acc, [(1.0, acc)], 0.01)

    monkeypatch.setattr(tune, "proxy_train", fake_proxy)
    r = recipe(**{"tune.trials": 6, "tune.families": ["dkd", "dist"]})
    out = tune.tune_losses(ds, r, None, log=lambda s: None)
    states = {row["name"]: row["state"] for row in out["trials"]}
    assert states["recipe"] == "complete" and "fail" in states.values()
    assert out["chosen"]["source"] == "recipe" and "standard error" in out["chosen"]["why"]
    with pytest.raises(Exception, match="tune.families"):
        tune.tune_losses(ds, recipe(**{"tune.families": ["fitnets"]}), None)


def test_ties_in_validation_accuracy_go_to_the_lower_validation_cross_entropy_not_to_the_first_run():
    """288 validation images make accuracies come in steps of 0.35 pt: in the digits benchmark four proxies tied
    at 281/288 and the two confirmed were the first two in trial order. Ties are now ordered by validation NLL."""
    from edgekd.auto.tune import choose, rank_key

    def row(name, acc, nll, state="complete"):
        return {"name": name, "losses": [{"name": name}], "val_accuracy": acc, "val_nll": nll, "state": state}

    rows = [row("ce", 0.90, 0.40), row("trial 0", 0.95, 0.30), row("trial 1", 0.95, 0.20), row("trial 2", 0.95, None)]
    assert choose(rows, 288)["source"] == "trial 1"  # no recipe row: the best by (accuracy, -NLL)
    assert sorted(rows, key=rank_key)[-1]["name"] == "trial 1" and sorted(rows, key=rank_key)[1]["name"] == "trial 2"
    # the recipe still stays inside one validation SE: sqrt(0.95 * 0.05 / 288) = 0.0128 > 0.95 - 0.94
    assert choose([row("recipe", 0.94, 0.5)] + rows, 288)["source"] == "recipe"


def test_validation_nll_is_the_mean_cross_entropy_on_the_validation_split():
    from types import SimpleNamespace

    from edgekd.auto.proxy import validation_nll

    class Fixed(torch.nn.Module):  # logits (log 3, 0) for every image: p = (3/4, 1/4)
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.tensor([[math.log(3.0), 0.0]]).expand(len(x), 2) + 0 * self.w

    ds = SimpleNamespace(x_val=torch.zeros(4, 1), y_val=torch.tensor([0, 0, 0, 1]))
    # three images right at p = 3/4, one wrong at p = 1/4
    assert validation_nll(Fixed(), ds, batch_size=3) == pytest.approx((3 * math.log(4 / 3) + math.log(4)) / 4)


def test_confirm_picks_the_tied_proxies_by_validation_cross_entropy(monkeypatch):
    import edgekd.auto.tune as tune
    from edgekd.auto.proxy import ProxyResult

    seen = []

    def fake_proxy(model, ds, idx, terms, cfg, **kw):
        seen.append(terms[-1].get("tag", terms[-1]["name"]))
        return ProxyResult(0.9, [(1.0, 0.9)], 0.01, val_nll=0.3)

    monkeypatch.setattr(tune, "proxy_train", fake_proxy)
    monkeypatch.setattr(tune, "build_student", lambda *a, **k: type("S", (), {"module": None})())
    monkeypatch.setattr(tune.TeacherOutputs, "compute", staticmethod(lambda teacher, x: None))
    rows = [{"name": "recipe", "losses": [{"name": "kd_soft"}], "val_accuracy": 0.9, "val_nll": 0.5,
             "state": "complete"},
            {"name": "ce", "losses": [{"name": "ce"}], "val_accuracy": 0.9, "val_nll": 0.6, "state": "complete"}]
    rows += [{"name": f"trial {i}", "losses": [{"name": "dkd", "tag": f"t{i}"}], "val_accuracy": 0.95,
              "val_nll": nll, "state": "complete"} for i, nll in enumerate((0.4, 0.2, 0.3))]
    ds = type("Ds", (), {"x_train": torch.zeros(1)})()
    out = tune.confirm_full(ds, recipe(), None, rows, 2, lambda s: None)
    assert [r["name"] for r in out] == ["recipe", "ce", "trial 1", "trial 2"] and seen[2:] == ["t1", "t2"]


def test_the_recipe_student_is_always_a_search_candidate_unless_it_starts_from_weights():
    space = expand_space([{"model": "tiny_cnn", "kwargs": {"width": [4, 8], "depth": [2]}}], 10)
    own = {"model": "tiny_cnn", "kwargs": {"width": 4, "depth": 2}}
    assert candidates_with_recipe_student(space, recipe()) == space  # already in the space: not twice
    other = recipe(**{"student.kwargs": {"width": 16, "depth": 3}})
    assert candidates_with_recipe_student(space, other)[-1] == {"model": "tiny_cnn",
                                                                "kwargs": {"width": 16, "depth": 3}}
    assert own in space
    pretrained = recipe(**{"student.kwargs": {"width": 16, "depth": 3}})
    pretrained.student.weights = "student.pt"
    assert candidates_with_recipe_student(space, pretrained) == space


@pytest.mark.slow
def test_a_measured_search_re_fits_the_predictor_and_records_held_out_errors():
    from edgekd.auto.search import search_students
    from edgekd.data import load_dataset

    r = recipe(**{"search.measure_local": True, "search.budget_ms": {"cpu-local": "student"},
                  "student.kwargs": {"width": 8, "depth": 2}})
    ds = load_dataset("digits", seed=0, val_fraction=0.2)
    res = search_students(ds, r, None, log=lambda s: None)
    refit = res["latency_refit"]
    # 21 references + the 8 tiny networks at digits' 8x8 input (references of the candidates' size)
    assert len(refit["references"]) == 29 and refit["scale"] > 0 and "also_measured" not in refit
    assert refit["form"] in refit["forms"] and set(refit["coefficients"]) == {"compute", "dispatch", "call"}
    pe = res["prediction_errors"]
    assert pe["n"] == 2 and all(c["stored_error"] is not None for c in pe["candidates"])
    own = next(c for c in res["candidates"] if c["kwargs"] == {"width": 8, "depth": 2})
    assert res["budgets_ms"]["cpu-local"] == own["latency"]["cpu-local"]["measured_ms"]  # 'student' resolved
    assert own["within_budget"]


def test_the_digits_recipe_trains_its_teacher_without_flips_and_a_small_student_on_validation_choices():
    from edgekd.config import load_recipe
    from edgekd.models import build_model, count_params
    import edgekd

    r = load_recipe(Path(edgekd.__file__).parent / "recipes" / "digits_auto.yaml")
    assert r.data.dataset == "digits" and r.data.val_fraction > 0
    # augmented by shifts alone: the standard policy's flips turn a 2/5/7 into no digit
    assert r.teacher.train.augment is True and (r.data.augment, r.data.shift_pixels) == ("shift", 1)
    assert r.distill.auto and r.distill.baseline is True
    teacher = build_model(r.teacher.model, num_classes=10, in_channels=1, **r.teacher.kwargs)
    student = build_model(r.student.model, num_classes=10, in_channels=1, **r.student.kwargs)
    assert count_params(student) * 20 <= count_params(teacher)
