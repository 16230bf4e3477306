"""GPU checks (skipped without CUDA; run by benchmarks/gpu_check.sh on a GPU machine).

- every learner's update on CUDA runs with torch.cuda.set_sync_debug_mode("error"): any synchronising CUDA call
  inside `update()` raises;
- the same update from the same state and batch gives the same parameters on CUDA as on the CPU, to float
  tolerance;
- a tiny run trains on CUDA, resumes on the CPU, and `racemarl eval` of it works on the CPU.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from racemarl.device import cpu_tree
from tests.conftest import tiny_config
from tests.test_device import LEARNERS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _to_cuda(learner, sample, pop):
    learner.to("cuda")
    learner.generator = torch.Generator("cuda").manual_seed(0)

    def sample_cuda():
        b = sample()
        for f in vars(b):
            v = getattr(b, f)
            if isinstance(v, torch.Tensor):
                setattr(b, f, v.cuda())
        return b

    return learner, sample_cuda, pop.cuda()


@pytest.mark.parametrize("name", list(LEARNERS))
def test_update_never_synchronises(name):
    learner, sample, pop = _to_cuda(*LEARNERS[name]())
    batches = [sample() for _ in range(4)]
    learner.update(batches[0], pop)  # first call: lazy optimiser state, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches[1:]:
            losses = learner.update(b, pop)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert learner.non_finite() is None
    assert all(v.is_cuda for v in losses.values())


@pytest.mark.parametrize("name", ["matd3", "facmac-continuous"])
def test_update_on_cuda_matches_the_cpu(name):
    """Learners whose update draws no random number that matters (MATD3 with its smoothing noise scaled to 0,
    FACMAC on continuous tasks): the same state and batch give the same parameters on both devices."""
    cpu, sample, pop = LEARNERS[name]()
    cpu.lcfg.policy_noise = 0.0
    gpu = copy.deepcopy(cpu)
    batch = sample()
    for _ in range(2):  # two critic + actor updates (policy_delay 1), the second with non-empty Adam moments
        cpu.update(batch, pop)
    gpu.to("cuda")
    gpu.generator = torch.Generator("cuda").manual_seed(0)
    b = copy.deepcopy(batch)
    for f in vars(b):
        v = getattr(b, f)
        if isinstance(v, torch.Tensor):
            setattr(b, f, v.cuda())
    for _ in range(2):
        gpu.update(b, pop.cuda())
    for (k, a), g in zip(cpu.state_dict().items(), cpu_tree(gpu.state_dict()).values()):
        torch.testing.assert_close(a, g, rtol=1e-3, atol=1e-4, msg=k)


def test_train_on_cuda_resume_and_evaluate_on_cpu(tmp_path):
    from racemarl.experiment.evaluate import evaluate_run
    from racemarl.train import Trainer

    run = tmp_path / "r"
    with Trainer(tiny_config("race", total_steps=80, device="cuda"), run) as t:
        assert t.learner.marl_heads.is_cuda and t.buffer.table.is_cuda and not t.actor.marl_heads.is_cuda
        t.train()
    summary = Trainer(tiny_config("race", total_steps=160, device="cpu"), run, resume=True).train()
    assert summary["total_env_steps"] >= 160
    assert evaluate_run(run, episodes=1)["episodes"] == 1
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "racemarl",
            "train",
            "--resume",
            str(run),
            "--total-steps",
            "240",
            "--device",
            "cuda",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
