"""`benchmarks/choose_beta.py`: the pre-registered rule that picks VMM's beta, on made-up tuning results."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "choose_beta", Path(__file__).parents[1] / "benchmarks" / "choose_beta.py"
)
choose_beta = importlib.util.module_from_spec(spec)
spec.loader.exec_module(choose_beta)


def run(score: float, share: float) -> dict:
    return {"score": score, "share": share}


def test_measures_use_the_score_window_and_the_shares_after_warm_up():
    curve = [
        {"env_steps": 10_000, "eval_return_marl": 0.0, "grad_enc_vmm": 1.0, "grad_enc_vfm": 1.0},  # share too early
        {"env_steps": 50_000, "eval_return_marl": 10.0, "grad_enc_vmm": 0.2, "grad_enc_vfm": 1.0},
        {
            "env_steps": 80_000,
            "eval_return_marl": 20.0,
            "grad_enc_vmm": 0.1,
            "grad_enc_vfm": 2.0,
        },  # window excludes 80k
        {"env_steps": 90_000, "eval_return_marl": 30.0, "grad_enc_vmm": 0.3, "grad_enc_vfm": 1.0},
        {"env_steps": 100_000, "eval_return_marl": 50.0, "grad_enc_vmm": 0.4, "grad_enc_vfm": 1.0},
        {"env_steps": 102_000, "eval_return_marl": 90.0, "grad_enc_vmm": 0.4, "grad_enc_vfm": 1.0},  # past the budget
    ]
    m = choose_beta.run_measures(curve)
    assert m["score"] == 40.0 and m["evaluations"] == 2
    assert m["share"] == pytest.approx(0.3)  # median of 0.2, 0.05, 0.3, 0.4, 0.4


def test_the_best_eligible_score_wins_when_nothing_is_tied():
    out = choose_beta.choose(
        {
            0.001: [run(5000, 0.002), run(5200, 0.003)],  # not eligible (VMM inert) although it scores best
            0.1: [run(4000, 0.05), run(4100, 0.06)],
            10: [run(4800, 2.0), run(4900, 3.0)],
        }
    )
    assert out["beta"] == 10 and out["why"] == "the highest score among the eligible"


def test_a_tie_within_the_seed_spread_goes_to_the_share_nearest_a_tenth():
    out = choose_beta.choose({0.1: [run(4000, 0.08), run(4600, 0.12)], 10: [run(4400, 2.0), run(4500, 3.0)]})
    assert out["tied"] == [0.1, 10] and out["beta"] == 0.1


def test_no_eligible_candidate_gives_the_largest():
    out = choose_beta.choose({0.001: [run(1, 0.001), run(2, 0.001)], 0.1: [run(3, 0.005), run(4, 0.02)]})
    assert out["beta"] == 0.1 and "largest" in out["why"]
