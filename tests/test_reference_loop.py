"""The loop as the reference codes run it: warm-up, champion evaluation, short PeVFA fitness, critic bias,
LayerNorm critics, the MARL heads' initial scale, the discrete VMM weight and legacy configs."""

import numpy as np
import pytest
import torch

from racemarl.acting.rollout import critic_bias
from racemarl.config import LEGACY_DEFAULTS, Config, from_dict, to_dict
from racemarl.nets.critics import PeVFA, TwinCritic
from racemarl.train import Trainer
from tests.conftest import tiny_config
from tests.test_discrete import fake_smac  # noqa: F401 - fixture

torch.set_num_threads(1)


LOOP_STEPS = (
    "play_generation",
    "select_champion",
    "evaluate_champion",
    "evolve_population",
    "learn",
    "inject_marl",
    "log_generation",
    "evaluate",
)


def _snapshot(trainer: Trainer) -> dict:
    return {
        "env_steps": trainer.progress.env_steps,
        "updates": trainer.progress.updates,
        "buffer": len(trainer.buffer),
        "population": None if trainer.population is None else trainer.population.clone(),
        "encoders": {k: v.detach().clone() for k, v in trainer.learner.encoders.named_parameters()},
        "best_heads": trainer.best_heads.clone(),
        "best_encoders": None
        if trainer.best_encoders is None
        else {k: v.clone() for k, v in trainer.best_encoders.items()},
    }


class LoopRecorder:
    """Runs the real `Trainer.train` and records each call of the loop's steps (`LOOP_STEPS`) in the order they
    start, with its result and what the trainer held just before and just after it. A reordering inside
    `train()` shows in `calls`; nothing of the loop is re-implemented here."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.calls: list[dict] = []
        for name in LOOP_STEPS:
            setattr(trainer, name, self._wrap(name, getattr(trainer, name)))

    def _wrap(self, name, method):
        def recorded(*args, **kwargs):
            call = {"name": name, "before": _snapshot(self.trainer)}
            self.calls.append(call)
            call["result"] = method(*args, **kwargs)
            call["after"] = _snapshot(self.trainer)
            return call["result"]

        return recorded

    def train(self) -> list[list[dict]]:
        self.trainer.train()
        return self.generations()

    def generations(self) -> list[list[dict]]:
        """The calls split into generations, each starting at its `play_generation`."""
        out: list[list[dict]] = []
        for call in self.calls:
            if call["name"] == "play_generation":
                out.append([])
            out[-1].append(call)
        return out


def _call(generation: list[dict], name: str) -> dict:
    (call,) = [c for c in generation if c["name"] == name]
    return call


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["scored", "updated"])
@pytest.mark.parametrize("evolve_first", [True, False])
def test_the_loop_runs_its_steps_in_the_reference_order_and_each_changes_only_its_own_part(
    tmp_path, mode, evolve_first
):
    # 20-step episodes (80 per generation with the population), evaluations every 100 env steps: some
    # generations evaluate, some do not
    cfg = tiny_config(
        "race",
        total_steps=200,
        eval_interval=100,
        extra=[
            "learner.start_steps=20",
            f"race.champion_eval={mode}",
            f"race.evolve_before_learning={str(evolve_first).lower()}",
        ],
    )
    with Trainer(cfg, tmp_path) as trainer:
        gens = LoopRecorder(trainer).train()
    assert len(gens) >= 3
    evaluated = 0
    for gen in gens:
        names = [c["name"] for c in gen]
        evals = "evaluate" in names
        evaluated += evals
        champion = ["evaluate_champion"] if evals and mode == "scored" else []
        middle = ["evolve_population", "learn"] if evolve_first else ["learn", "evolve_population"]
        tail = ["evaluate", "evaluate_champion"] if evals and mode == "updated" else ["evaluate"] if evals else []
        assert names == [
            "play_generation",
            "select_champion",
            *champion,
            *middle,
            "inject_marl",
            "log_generation",
            *tail,
        ]
        for call in gen:  # env steps move only when teams play, updates only in learn, encoders only by updates
            b, a = call["before"], call["after"]
            assert a["env_steps"] == b["env_steps"]  # `train()` itself counts the steps played
            assert (a["updates"] == b["updates"]) or call["name"] == "learn"
            assert _equal(a["encoders"], b["encoders"]) or call["name"] == "learn"
            assert a["buffer"] == b["buffer"] or call["name"] == "play_generation"
            if call["name"] not in ("evolve_population", "inject_marl"):
                assert torch.equal(a["population"], b["population"])
    assert 2 <= evaluated < len(gens)
    for gen, following in zip(gens, gens[1:]):  # each generation adds the env steps its teams played
        _, steps = gen[0]["result"]
        assert following[0]["before"]["env_steps"] == gen[0]["before"]["env_steps"] + steps


@pytest.mark.parametrize("mode", ["scored", "updated"])
def test_champion_is_evaluated_with_the_encoders_it_was_scored_with(tmp_path, mode):
    cfg = tiny_config("race", total_steps=100, extra=["learner.start_steps=20", f"race.champion_eval={mode}"])
    with Trainer(cfg, tmp_path) as trainer:
        gens = LoopRecorder(trainer).train()
    checked = 0
    for gen in gens[1:]:  # after the warm-up generation: the population plays and the updates move the encoders
        if not any(c["name"] == "evaluate" for c in gen):
            continue
        checked += 1
        played = _call(gen, "play_generation")
        fitness, _ = played["result"]
        scored_with = played["after"]["encoders"]  # the encoders the population just played with
        learned = _call(gen, "learn")["after"]["encoders"]
        assert not _equal(scored_with, learned)  # the generation's updates moved them
        # the champion is the best-scored team as it played (before evolution changed the population)
        champion = _call(gen, "evaluate_champion")
        assert torch.equal(champion["before"]["best_heads"], played["after"]["population"][int(np.argmax(fitness))])
        if mode == "scored":  # played before the updates, with (a copy of) the encoders it was scored with
            assert _equal(champion["before"]["encoders"], scored_with)
            kept = {k: v[0] for k, v in champion["before"]["best_encoders"].items()}
            assert _equal(kept, scored_with)
        else:  # played after the updates, with the encoders they produced
            assert champion["before"]["best_encoders"] is None
            assert _equal(champion["before"]["encoders"], learned)
    assert checked >= 1


def test_champion_row_matches_a_replay_with_the_scored_encoders(tmp_path):
    """`eval_return_best_team` is the return of the champion's heads on the pre-update encoders."""
    cfg = tiny_config("race", total_steps=140, extra=["learner.start_steps=20"])
    with Trainer(cfg, tmp_path) as trainer:
        trainer.train()
        last = trainer.progress.rows[-1]
        trainer.progress.evals -= 1  # replay the last evaluation's env seeds
        trainer.eval_envs = [
            __import__("racemarl.envs", fromlist=["make_env"]).make_env(
                cfg.env.task, agent_obsk=cfg.env.agent_obsk, max_episode_steps=cfg.env.max_episode_steps
            )
        ]
        returns, _ = trainer.evaluate_team(trainer.best_heads, trainer.best_encoders)
        assert float(returns.mean()) == pytest.approx(last["eval_return_best_team"], rel=1e-5, abs=1e-4)
        returns_now, _ = trainer.evaluate_team(trainer.best_heads)  # the updated shared encoders
        assert float(returns_now.mean()) != pytest.approx(last["eval_return_best_team"], rel=1e-6, abs=1e-6)


def test_warmup_only_the_marl_team_plays_until_start_steps(tmp_path):
    # episodes of 20 steps, start_steps 60: three MARL-only generations, then the population joins
    cfg = tiny_config("race", total_steps=61, extra=["learner.start_steps=60"])
    with Trainer(cfg, tmp_path) as trainer:
        gens = LoopRecorder(trainer).train()
    initial = gens[0][0]["before"]["population"]
    assert len(gens) == 4
    for i, gen in enumerate(gens[:3]):
        fitness, steps = _call(gen, "play_generation")["result"]
        assert steps == 20 and len(fitness) == 0  # the MARL team's episode alone
        end = gen[-1]["after"]
        assert end["buffer"] == end["env_steps"] == 20 * (i + 1)
        assert torch.equal(end["population"], initial)  # no evolution, no injection
        assert end["updates"] == (0 if i < 2 else 20)  # learning starts once 60 steps are in
    fitness, steps = _call(gens[3], "play_generation")["result"]
    assert steps == 20 * (1 + cfg.race.pop_size) and len(fitness) == cfg.race.pop_size
    end = _call(gens[3], "log_generation")["after"]
    assert end["updates"] == 20 + steps
    assert not torch.equal(end["population"], initial)


def test_old_loop_lets_the_population_play_during_warmup(tmp_path):
    cfg = tiny_config("race", total_steps=1, extra=["learner.start_steps=60", "race.play_during_warmup=true"])
    with Trainer(cfg, tmp_path) as trainer:
        (gen,) = LoopRecorder(trainer).train()
    fitness, steps = _call(gen, "play_generation")["result"]
    assert steps == 20 * (1 + cfg.race.pop_size) and len(fitness) == cfg.race.pop_size


def test_short_fitness_rollouts_are_cut_and_bootstrapped_by_the_pevfa(tmp_path):
    # start_steps 0: the first generation is already past the warm-up
    cfg = tiny_config("race", extra=["learner.start_steps=0", "race.fitness_mc_prob=0", "race.fitness_steps=7"])
    with Trainer(cfg, tmp_path) as trainer:
        plan = trainer.generation_plan()
        assert list(plan.step_limit) == [-1] + [7] * cfg.race.pop_size
        results = trainer.workers.play(plan)
        pop_results = results[1:]
        assert all(r.length == 7 and r.cut for r in pop_results)
        assert results[0].length == 20 and not results[0].cut
        fitness = trainer.bootstrapped_fitness(pop_results)
        gamma = cfg.learner.gamma
        for j, r in enumerate(pop_results):
            disc = float(np.sum(r.transitions["reward"] * gamma ** np.arange(7)))
            obs = torch.from_numpy(r.transitions["next_obs"][-1:])
            state = torch.from_numpy(r.transitions["next_state"][-1:])
            q = trainer.learner.pevfa_value(obs, state, trainer.population[j : j + 1])
            # the PeVFA at the team's own greedy action: min of the twins
            a = trainer.learner.act(obs, trainer.population[j : j + 1])
            joint = trainer.learner.layout.flatten(a[:, :, None, :])
            twins = trainer.learner.pevfa(state[:, None], joint, trainer.population[j : j + 1])
            assert float(q) == pytest.approx(float(twins.detach().min()), abs=1e-6)
            assert fitness[j] == pytest.approx(disc + gamma**7 * float(q), rel=1e-5, abs=1e-5)


def test_full_episode_fitness_when_theta_is_one(tmp_path):
    # theta = 1: every team plays whole episodes and its fitness is the mean return of its own episodes, in slot order
    # (slot 0 the MARL team, then each population team's `episodes_per_team` slots)
    cfg = tiny_config("race", extra=["learner.start_steps=0", "race.fitness_mc_prob=1", "race.episodes_per_team=2"])
    with Trainer(cfg, tmp_path) as trainer:
        plan = trainer.generation_plan()
        assert list(plan.step_limit) == [-1] * (1 + 2 * cfg.race.pop_size)
        seen = {}
        play = trainer.workers.play

        def recording(plan):
            seen["results"] = play(plan)
            return seen["results"]

        trainer.workers.play = recording
        fitness, steps = trainer.play_generation()
    results = seen["results"]
    assert [r.slot for r in results] == list(range(1 + 2 * cfg.race.pop_size))
    assert not any(r.cut for r in results) and steps == sum(r.length for r in results)
    returns = np.array([r.episode_return for r in results])
    assert len(set(returns[1:].round(6))) > 1  # the teams differ, so a mix-up of slots shows
    expected = [(returns[1 + 2 * j] + returns[2 + 2 * j]) / 2 for j in range(cfg.race.pop_size)]
    np.testing.assert_allclose(fitness, expected, rtol=1e-12)


def test_critic_bias_is_zero_for_exact_values_and_skips_the_unseen_tail():
    gamma = 0.9
    rewards = np.arange(1, 101, dtype=np.float32)
    g = np.zeros(100)
    acc = 0.0
    for t in range(99, -1, -1):
        acc = rewards[t] + gamma * acc
        g[t] = acc
    terminated = {"reward": rewards, "terminated": np.r_[np.zeros(99), 1.0].astype(np.float32)}
    cut = {"reward": rewards, "terminated": np.zeros(100, np.float32)}
    out = critic_bias([terminated], [g], gamma)
    assert out["bias"] == pytest.approx(0.0, abs=1e-3)  # float32 rewards
    assert out["mc"] == pytest.approx(g.mean())
    horizon = int(np.ceil(np.log(0.01) / np.log(gamma)))  # 44 steps for gamma 0.9
    out = critic_bias([cut], [g + 5.0], gamma)  # a critic that over-estimates by 5 everywhere
    assert out["bias"] == pytest.approx(5.0, abs=1e-3)
    assert out["mc"] == pytest.approx(g[: 100 - horizon].mean())  # only steps with the full future in view


def test_q_bias_is_logged_for_matd3_and_race(tmp_path):
    for algo in ("matd3", "race"):
        # gamma 0.5: 7 steps of horizon, so the 20-step episodes have 13 scored steps
        with Trainer(
            tiny_config(algo, extra=["learner.start_steps=20", "learner.gamma=0.5"]), tmp_path / algo
        ) as trainer:
            trainer.train()
            row = trainer.progress.rows[-1]
            assert np.isfinite(row["q_bias_marl"])
            assert row["q_bias_marl"] == pytest.approx(row["q_marl"] - row["mc_return_marl"], abs=1e-4)


def test_generation_scalars_hold_the_fitness_vector_and_the_marl_copy(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # theta 0.5: some generations are scored by full episodes, others by short rollouts + the PeVFA
    cfg = tiny_config("race", total_steps=400, extra=["learner.start_steps=20", "race.fitness_steps=5"])
    with Trainer(cfg, tmp_path) as trainer:
        trainer.train()
        short = {j: trainer.draws_short_fitness(j) for j in range(trainer.progress.generation)}
        rows = trainer.progress.rows
    assert set(short.values()) == {False, True}, "the test needs both kinds of generation"
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    steps = {kind: {} for kind in ("fitness", "fitness_short")}
    for kind, by_team in steps.items():
        assert {f"generation/{kind}/team_{j}" for j in range(cfg.race.pop_size)} <= tags
        for j in range(cfg.race.pop_size):
            by_team[j] = {e.step: e.value for e in acc.Scalars(f"generation/{kind}/team_{j}")}
    # each played generation is logged under exactly one kind, the one its draw chose
    full_steps, short_steps = set(steps["fitness"][0]), set(steps["fitness_short"][0])
    assert full_steps and short_steps and not full_steps & short_steps
    gen_at = {e.step: i + 1 for i, e in enumerate(acc.Scalars("generation/train_return"))}
    assert all(short[gen_at[s] - 1] for s in short_steps) and not any(short[gen_at[s] - 1] for s in full_steps)
    for kind, by_team in steps.items():
        copy = acc.Scalars(f"generation/{kind}_marl_copy")
        for e in copy:  # the copy's fitness is one of that generation's team fitnesses
            assert any(abs(by_team[j][e.step] - e.value) < 1e-4 for j in by_team)
    assert (
        len(acc.Scalars("generation/fitness_marl_copy")) + len(acc.Scalars("generation/fitness_short_marl_copy")) >= 2
    )
    # metrics.csv says which kind each row's fitness columns are
    for row in rows:
        if row.get("fitness_max") is not None:
            assert row["fitness_short"] == float(short[row["generation"] - 1])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_twin_critic_first_and_conditioned_paths_agree(layer_norm):
    torch.manual_seed(0)
    critic = TwinCritic(5, 3, [16, 12], extra_dim=4, layer_norm=layer_norm)
    with torch.no_grad():  # make the LayerNorm affine non-trivial
        for m in critic.modules():
            if type(m).__name__ == "GroupedLayerNorm":
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    k, b = 3, 7
    state, action, extra = torch.randn(k, b, 5), torch.randn(k, b, 3), torch.randn(k, 4)
    full = critic.net(torch.cat([state, action, extra[:, None].expand(k, b, 4)], -1).reshape(k * b, -1))
    out = critic.forward_conditioned(state, action, extra)
    torch.testing.assert_close(out, full.view(2, k, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(critic.forward_conditioned(state, action, extra, first_only=True), out[0])
    plain = TwinCritic(5, 3, [16, 12], layer_norm=layer_norm)
    s, a = torch.randn(b, 5), torch.randn(b, 3)
    torch.testing.assert_close(plain.first(s, a), plain(s, a)[0], rtol=1e-6, atol=1e-6)
    n_ln = sum(type(m).__name__ == "GroupedLayerNorm" for m in plain.modules())
    assert n_ln == (2 if layer_norm else 0)


def test_layer_norm_bounds_the_critic_far_from_the_data():
    """LayerNorm keeps the hidden features on a fixed scale, so the critic's output grows far less with the
    size of an out-of-range input than a plain ReLU MLP's (which is linear in it)."""
    torch.manual_seed(1)
    outs = {}
    for ln in (False, True):
        critic = TwinCritic(4, 2, [32, 32], layer_norm=ln)
        s = torch.randn(64, 4)
        a = torch.randn(64, 2)
        with torch.no_grad():
            near, far = critic(s, a).abs().mean(), critic(s * 100, a * 100).abs().mean()
        outs[ln] = float(far / near)
    assert outs[False] > 20 and outs[True] < 5


def test_pevfa_with_layer_norm_gives_no_gradient_to_heads():
    mask = torch.ones(2, 1, dtype=torch.bool)
    pevfa = PeVFA(6, 2, [16, 16], 2, 5, mask, 8, layer_norm=True)
    heads = torch.randn(3, 2, 1, 5, requires_grad=True)
    pevfa(torch.randn(3, 4, 6), torch.randn(3, 4, 2), heads).sum().backward()
    assert heads.grad is None
    assert all(p.grad is not None for p in pevfa.critic.parameters())


def test_marl_heads_start_scaled(tmp_path):
    small = Trainer(tiny_config("matd3"), tmp_path / "a")
    full = Trainer(tiny_config("matd3", extra=["learner.marl_head_init_scale=1.0"]), tmp_path / "b")
    try:
        torch.testing.assert_close(small.learner.marl_heads.detach(), 0.1 * full.learner.marl_heads.detach())
    finally:
        small.close()
        full.close()


def test_saved_configs_without_the_new_keys_load_with_the_old_behaviour():
    old = to_dict(Config())
    for dotted in LEGACY_DEFAULTS:  # a section's key (race.mutate_bias) or a top-level one (precision)
        *sections, key = dotted.split(".")
        holder = old
        for section in sections:
            holder = holder[section]
        del holder[key]
    cfg = from_dict(old)
    for dotted, value in LEGACY_DEFAULTS.items():
        obj = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert obj == value
    fresh = from_dict(to_dict(Config()))  # a new run's saved config keeps its own values
    assert fresh.race.champion_eval == "scored" and fresh.net.critic_layer_norm is True


def test_discrete_vmm_is_summed_over_each_episodes_steps(fake_smac):
    """At the same beta, the summed VMM term is the per-step mean times the batch's mean episode length."""
    from racemarl.acting.rollout_discrete import run_discrete_episodes
    from racemarl.algorithms.race_discrete import RaceDiscreteLearner
    from racemarl.data.episode_buffer import EpisodeBuffer
    from tests.test_discrete import discrete_config, fake_batch

    losses = {}
    for mode in ("mean", "sum"):
        envs = fake_batch(3)
        cfg = discrete_config("race", extra=["race.vmm_beta=0.1", f"discrete.vmm_time_reduction={mode}"])
        torch.manual_seed(0)  # the same networks for both modes
        learner = RaceDiscreteLearner(envs.spec, cfg, torch.Generator().manual_seed(0))
        buffer = EpisodeBuffer(
            8,
            envs.spec.episode_limit,
            envs.spec.n_agents,
            learner.obs_dim,
            envs.spec.state_dim,
            learner.n_actions,
            seed=0,
        )
        heads = learner.marl_heads.detach()[None].expand(3, *learner.marl_heads.shape)
        run_discrete_episodes(
            envs, learner, heads, [np.random.default_rng(i) for i in range(3)], epsilon=np.ones(3), buffer=buffer
        )
        batch = buffer.sample(3)
        learner.rcfg.vfm_pevfa = False
        losses[mode] = learner.extra_encoder_losses(batch, learner.unroll(batch), None)["vmm"].item()
        steps_per_episode = float(batch.mask.sum()) / batch.mask.shape[0]
    assert steps_per_episode > 1
    assert losses["sum"] == pytest.approx(losses["mean"] * steps_per_episode, rel=1e-5)


@pytest.mark.parametrize("algo", ["facmac", "race"])
def test_q_bias_is_logged_on_discrete_tasks(fake_smac, tmp_path, algo):
    from tests.test_discrete import discrete_config

    with Trainer(discrete_config(algo), tmp_path) as trainer:
        trainer.train()
        rows = trainer.progress.rows
    finite = [r for r in rows if np.isfinite(r["q_bias_marl"])]
    assert finite  # the fake battles end by termination: every step has its full return in view
    for r in finite:
        assert r["q_bias_marl"] == pytest.approx(r["q_marl"] - r["mc_return_marl"], abs=1e-4)
