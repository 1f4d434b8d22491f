"""Ranker quality against the generator's ground truth, on a small marketplace built by the real stages.

The data: `features.synthetic.generate` (800 members, 200 jobs, 4 days, 6,000 impressions a day), then
`rankflow.stages.features.build_features` for every day (Spark windows, Feast point-in-time training
set, validation). Days 1-3 train, day 4 (6,000 rows, ~470 applies) is the evaluation day. The default
demo size and its numbers are in benchmarks/ranker_quality.py and benchmarks/results/ranker-quality-*.md.

Why these bounds at this size (measured on the same generator settings: bound 0.829, ranker 0.723,
logistic 0.743, ECE 0.019 vs the oracle's 0.006, warm 0.7235 vs full 0.7233 in 0.056 of the time):
- The oracle AUC (~0.89) is out of reach for any learner here: a model told the whole truth except each
  member's random effect, which it must estimate from ~10 events (MAP under the true prior), scores
  ~0.83 ("learnable bound"). So the ranker is bounded against that estimate: within 0.14 of it, and
  far above chance (> 0.68; the AUC's standard error with ~470 applies is ~0.012).
- Not asserted: ranker > logistic regression. With two days of features the ranker lost by ~0.02 (before
  the wide part); at the demo size it wins by 0.002-0.005 over three seeds
  (benchmarks/results/ranker-quality-*.md), a margin this size's noise (AUC standard error ~0.012) hides.
- ECE (15 equal-width bins): the true probabilities score ~0.006 on 6,000 rows, and a calibration
  fitted on ~4,000 held-out rows inherits their apply-rate noise (~0.01), so the calibrated ranker
  is held to oracle ECE + 0.02 and must not be worse than uncalibrated (+0.005).
- Warm start (serving model of days 1-2 continued on day 3 only) must reach the full retrain's AUC
  within 0.01 (noise between two trainings at this size) in less than half its time.
"""

from __future__ import annotations

import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

SIZE = {"members": 800, "jobs": 200, "days": 4, "impressions_per_day": 6_000}


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    """One benchmark run (ranker, logistic, warm start, oracle, bound) on the small built marketplace."""
    from tiny_marketplace import generate_tiny
    from ranker_quality import logistic_config, measure
    from rankflow.config import load_settings
    from rankflow.stages.features import run_range
    from training.ranker.train import quality_config

    root = generate_tiny(tmp_path_factory.mktemp("quality"), **SIZE)
    settings = load_settings(root)
    first = date(2026, 1, 1)
    run_range(settings, [first + timedelta(days=i) for i in range(SIZE["days"])], steps=("build",))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return measure(settings, quality_config(device="cpu"), logistic_config=logistic_config("cpu"), log=lambda *_: None)
    finally:
        torch.set_num_threads(previous)


def test_ranker_is_within_reach_of_the_learnable_bound(quality):
    ranker, bound, oracle = quality.ranker["auc"], quality.bound["auc"], quality.oracle["auc"]
    assert oracle > bound > 0.75                      # the data carries signal the member effects explain
    assert ranker > 0.68
    assert bound - ranker < 0.14


def test_calibrated_probabilities_match_observed_rates(quality):
    assert quality.ranker["ece"] < quality.oracle["ece"] + 0.02
    assert quality.ranker["ece"] <= quality.ranker["ece_uncalibrated"] + 0.005


def test_warm_start_matches_the_full_retrain_in_a_fraction_of_the_time(quality):
    assert quality.warm["auc"] > quality.ranker["auc"] - 0.01
    assert quality.warm["seconds"] < 0.5 * quality.full_seconds


def test_served_score_adds_random_effects_to_the_evaluated_ranker(quality):
    """The served-score rows (ranker + GLMix random effects) score the evaluated ranker through serving's path."""
    served = quality.served
    assert abs(served["ranker alone"] - quality.ranker["auc"]) < 0.002  # calibrated logit: ties move it slightly
    assert served["glmix alone"] > 0.68
    assert min(served.values()) > 0.68
    # The random effects move the score: all-zero effects would leave the ranker's AUC exactly as it was.
    added = {k: v for k, v in served.items() if k.startswith("ranker + ")}
    assert len(added) == 2 and all(abs(v - served["ranker alone"]) > 1e-4 for v in added.values()), served
