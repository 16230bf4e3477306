"""The config's schema: one dataclass per section, the whole `Config`, and its validation (`Config.validate`,
`check_ranges`). Reading and writing it (dicts, YAML, `--set` overrides, old runs' defaults) is in `io.py`."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

ALGOS = ("race", "matd3", "facmac", "ea", "merl")
ROLLOUT_BACKENDS = ("inline", "process", "ray")
# What `race.vmm_beta: auto` becomes. Discrete tasks: the official SMAC run script's 0.001, with the loss summed
# over each episode's steps as there (`discrete.vmm_time_reduction`). Continuous tasks: 10, the value that the
# pre-registered tuning on HalfCheetah-6x1 chose (tuning seeds 101-102, 100k steps, beta 0.1 / 1 / 10; docs/results.md,
# "VMM on MA-MuJoCo", and benchmarks/results/vmm_beta.json). Runs made before it used 0.001 and record it.
VMM_BETA_DISCRETE = 0.001
VMM_BETA_CONTINUOUS = 10.0


def resolve_vmm_beta(value: float | str, discrete: bool) -> float:
    """The number `race.vmm_beta` stands for on a task with discrete (or continuous) actions."""
    if value == "auto":
        return VMM_BETA_DISCRETE if discrete else VMM_BETA_CONTINUOUS
    return float(value)


class ConfigError(ValueError):
    """A bad configuration value or key."""


@dataclass
class EnvConfig:
    task: str = "mamujoco/HalfCheetah-6x1"
    """Task name, e.g. mamujoco/HalfCheetah-6x1 (see `racemarl tasks`)."""
    agent_obsk: int = 0
    """MA-MuJoCo observation depth: 0 = each agent sees only its own joints."""
    max_episode_steps: int | None = None
    """Time limit; episodes cut here are truncated (bootstrapped), not terminated. None = the task's
    own limit (1000 for MA-MuJoCo, 100 for SMAX, the map's limit for SMAC)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the environment factory (pettingzoo/*, mpe/* and registered tasks), e.g.
    `--set env.kwargs.N=4`; the other families take none."""


@dataclass
class NetConfig:
    encoder_hidden: int = 400
    """Hidden width of each per-agent observation encoder."""
    embed_dim: int = 300
    """Size d of the shared representation z_i the linear heads read."""
    critic_hidden: list[int] = field(default_factory=lambda: [400, 300])
    """Hidden widths of the centralised critics (MARL critic and PeVFA)."""
    policy_embed_dim: int = 64
    """Width of the PeVFA policy embedding of each agent's head."""
    critic_layer_norm: bool = True
    """LayerNorm after every hidden layer of the continuous critics and the PeVFA (ERL-Re2's `use_ln`);
    MATD3 and RACE alike."""
    fast_tanh: bool = True
    """The learner's encoders compute tanh as 2 sigmoid(2x) - 1 on the CPU (5x faster than PyTorch's CPU tanh,
    error < 2e-7); false = torch.tanh, bit for bit as before. No effect on a GPU."""


@dataclass
class LearnerConfig:
    gamma: float = 0.99
    """Discount factor of the continuous learners' TD targets (MATD3, FACMAC on MA-MuJoCo, RACE)."""
    tau: float = 0.005
    """Polyak factor of the target networks."""
    lr_actor: float = 1e-3
    """Adam learning rate of the MARL team's linear heads."""
    lr_critic: float = 1e-3
    """Adam learning rate of the critics: the twin MARL critic, the PeVFA, V_zeta and the MI critic."""
    lr_encoder: float = 1e-3
    """Adam learning rate of the shared per-agent observation encoders."""
    batch_size: int = 256
    """Transitions per gradient update (ERL-Re2 uses 128; 256 is the spec's MATD3 default)."""
    buffer_size: int = 1_000_000
    """Capacity of the shared replay buffer, in transitions (the oldest are overwritten)."""
    policy_noise: float = 0.2
    """TD3 target policy smoothing noise (fraction of the action range half-width)."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise (same units as policy_noise)."""
    policy_delay: int = 2
    """Actor, encoder and target updates happen every `policy_delay` critic updates."""
    expl_noise: float = 0.1
    """Gaussian exploration noise of the MARL team while collecting."""
    start_steps: int = 10_000
    """Warm-up: env steps the MARL team plays with uniformly random actions before learning starts. With
    RACE the population neither plays nor evolves until then (`race.play_during_warmup`)."""
    updates_per_step: float = 1.0
    """Gradient updates per env step collected (all teams' steps count)."""
    grad_clip: float = 10.0
    """Max global gradient norm per optimiser (0 = no clipping; ERL-Re2 clips every network at 10)."""
    marl_head_init_scale: float = 0.1
    """The MARL team's heads start at nn.Linear's default initialisation times this (ERL-Re2: 0.1, so its first
    actions are near the middle of the range); population heads always start at the default."""


@dataclass
class DiscreteConfig:
    """Learner settings for discrete tasks (smax/*, smac/*): FACMAC and RACE-discrete.

    Defaults follow the official RACE SMAC code; `learner.*` holds the continuous-task settings.
    """

    gamma: float = 0.99
    """Discount factor of the discrete learners' TD(lambda) targets."""
    td_lambda: float = 0.8
    """lambda of the TD(lambda) targets of the mixed critics."""
    lr_actor: float = 2.5e-3
    """Adam learning rate of the MARL heads and of the recurrent encoders."""
    lr_critic: float = 5e-4
    """Adam learning rate of the critics, mixers, PeVFA, V_zeta and the MI critic."""
    batch_episodes: int = 32
    """Whole episodes per gradient update."""
    buffer_episodes: int = 5000
    """Capacity of the episode buffer, in episodes (the oldest are overwritten)."""
    updates_per_episode: float = 1.0
    """Gradient updates (each on a batch of whole episodes) per episode collected, done after each
    generation: 6 per generation with RACE's 5 + 1 teams (official code), 1 per episode for FACMAC."""
    grad_clip: float = 10.0
    """Max global gradient norm per optimiser (0 = no clipping)."""
    target_update: Literal["hard", "soft"] = "hard"
    """How the target networks follow the online ones: hard = a copy every target_update_interval updates
    (official code), soft = Polyak averaging with tau every update."""
    target_update_interval: int = 200
    """hard: copy the online networks into the targets every this many updates."""
    tau: float = 0.005
    """soft: Polyak factor of the targets, applied every update."""
    epsilon_start: float = 0.5
    """Exploration of the MARL team: sample from (1 - eps) * pi + eps * uniform(available actions)."""
    epsilon_finish: float = 0.05
    """Final epsilon of the MARL team's exploration, reached after epsilon_anneal_steps env steps."""
    epsilon_anneal_steps: int = 50_000
    """Env steps over which epsilon decays linearly from epsilon_start to epsilon_finish."""
    rnn_hidden: int = 64
    """Width of the recurrent encoder: Linear(obs + last action + agent id, h)-ReLU-GRU(h)."""
    shared_rnn: bool = True
    """One recurrent encoder for all agents (official code, agent-id input) or one per agent (the poster)."""
    critic_hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the per-agent critic on (o_i, u_i, agent id)."""
    mixer_embed: int = 32
    """QMIX mixer embedding width."""
    hypernet_hidden: int = 64
    """Hidden width of the QMIX mixer's hypernetworks."""
    logit_reg: float = 0.0
    """Weight of the mean squared logits in the MARL heads' loss (the regulariser of FACMAC's continuous code; the
    discrete references, official RACE and FACMAC's SMAC learner, have none: 0; runs before 0.2 used 1e-3)."""
    pevfa_target_encoder: Literal["online", "target"] = "online"
    """RACE-discrete: the encoder whose hidden states give the teams' greedy next actions in the PeVFA's TD(lambda)
    target (official RACE: the online one; runs before this setting existed: the target encoder)."""
    value_target: Literal["td_lambda", "one_step"] = "td_lambda"
    """RACE-discrete: V_zeta's target F(s_t). td_lambda = the larger of the MARL critic's and the PeVFA's TD(lambda)
    targets (official RACE); one_step = r_t + c max(Q_psi'(s_{t+1}), max_j Q_theta'(s_{t+1}, W_j)) with
    c = race.value_target_factor (the continuous learner's form; runs before this setting existed)."""
    vmm_time_reduction: Literal["sum", "mean"] = "sum"
    """RACE-discrete: L_VMM summed over an episode's time steps (official code: at beta 0.001 the loss is about
    T times what its mean would be) or averaged over them."""
    marl_data: Literal["shared", "own"] = "shared"
    """RACE-discrete: the episodes the MARL critic and the MARL heads' actor term learn from. shared = a batch of
    the shared buffer, every team's episodes (both reference codes); own = a second batch drawn from the MARL
    team's own episodes only (a diagnostic: the PeVFA, V_zeta, VFM and VMM keep the shared batch)."""


@dataclass
class RaceConfig:
    pop_size: int = 5
    """Number of evolved teams (the MARL team comes on top)."""
    elite_fraction: float = 0.2
    """Share of the population kept as elites (int(elite_fraction * pop_size) teams): each is cloned into a
    protected slot."""
    tournament_size: int = 3
    """Teams drawn per tournament when selecting parents."""
    mutation_prob: float = 0.9
    """Probability that a non-elite team mutates a given agent's head."""
    mutation_frac: float = 0.1
    """Fraction of each head row's weights perturbed by a mutation (at least one)."""
    mutation_strength: float = 0.1
    """Normal mutation: w += N(0, 1) * mutation_strength * |w| on the chosen weights."""
    super_mutation_prob: float = 0.05
    """Probability that a mutation is a super mutation (strength super_mutation_strength) instead of a normal
    one."""
    super_mutation_strength: float = 10.0
    """Super mutation: w += N(0, 1) * super_mutation_strength * |w| on the chosen weights."""
    reset_prob: float = 0.05
    """Probability that a mutation resets the chosen weights to N(0, 1) draws."""
    mutate_bias: bool = False
    """Also mutate head biases (the reference code never does)."""
    parents_survive: bool = True
    """Reference evolution: elites are cloned into protected slots, tournament winners survive with mutation
    only and crossover fills only the unselected slots. Off: every non-elite slot becomes a crossover child
    that then mutates (this project's first loop)."""
    operators: Literal["agent", "row"] = "agent"
    """agent = RACE's agent-level crossover/mutation; row = ERL-style operators on the whole team."""
    injection_interval: int = 1
    """Copy the MARL team into the population every this many generations (0 = never)."""
    episodes_per_team: int = 1
    """Episodes each population team plays per generation to estimate its fitness."""
    vmm_beta: float | Literal["auto"] = "auto"
    """Weight beta of the value-aware MI loss in the encoder loss (0 = no VMM). `auto`: the task family's
    value, 0.001 on discrete tasks (the official SMAC value) and 10 on continuous tasks (chosen by a
    pre-registered tuning, docs/results.md, "VMM on MA-MuJoCo"); a run's config.yaml records the number it used."""
    vfm_pevfa: bool = True
    """Train the encoder through the PeVFA for sampled teams (off: MARL critic only)."""
    shared_encoder: bool = True
    """All teams share the per-agent encoders (off: each team has its own)."""
    pevfa_teams_per_update: int = 1
    """K: population teams sampled per update for the PeVFA and VFM losses."""
    value_target_factor: float | None = None
    """Factor on the max of the two next-state values in F(s) (None = gamma; the poster prints 1/2)."""
    mi_hidden: int = 128
    """Hidden width of both branches of the separable MI critic T_omega(s, z_i) = g(s) . f_i(z_i) (VMM)."""
    play_during_warmup: bool = False
    """Population teams play (and evolve) during the MARL team's warm-up (`learner.start_steps`). Off, as in
    both reference codes: only the MARL team acts until it has collected start_steps env steps."""
    evolve_before_learning: bool = True
    """Evolve the population right after it played, before the generation's gradient updates (both reference
    codes); off: after them. The MARL team is injected after the updates either way."""
    pevfa_target_encoder: Literal["online", "target"] = "online"
    """Encoder the PeVFA's TD target reads the next observation with (ERL-Re2: the online one)."""
    pevfa_twin_embeddings: bool = True
    """Continuous PeVFA: each of its twin critics embeds the team's heads with its own policy-embedding network
    (ERL-Re2's Policy_Value_Network); off: the twins share one embedding (runs before this setting existed)."""
    pevfa_target_smoothing: bool = False
    """TD3 target policy smoothing on the PeVFA's next actions (ERL-Re2: none)."""
    fitness_mc_prob: float = 0.5
    """theta: probability, drawn once per generation for the whole population, that teams are scored by full
    episodes (undiscounted return). Otherwise each team plays `fitness_steps` steps and is scored by their
    discounted return plus gamma^H min(Q_theta(s_H, pi_j(s_H), W_j)) of the PeVFA (ERL-Re2: theta 0.5, H 200).
    RACE only (EA-only and MERL have no PeVFA: always full episodes). 1 = always full episodes."""
    fitness_steps: int = 200
    """H: steps of the short, PeVFA-bootstrapped fitness rollouts (see fitness_mc_prob)."""
    champion_eval: Literal["scored", "updated"] = "scored"
    """Which encoders the generation's best team is evaluated with: `scored` = those it was scored with, before
    the generation's gradient updates (ERL-Re2); `updated` = after them (this project's first loop)."""


@dataclass
class LoggingConfig:
    """Optional experiment trackers; metrics.csv and TensorBoard are always written."""

    wandb: bool = False
    """Forward every metrics.csv row to Weights & Biases (pip install 'racemarl[tracking]')."""
    mlflow: bool = False
    """Forward every metrics.csv row to MLflow (pip install 'racemarl[tracking]')."""
    project: str = "racemarl"
    """W&B project / MLflow experiment name."""
    mode: Literal["offline", "online"] = "offline"
    """offline: W&B writes RUN_DIR/wandb (upload later with `wandb sync`), MLflow a file store in RUN_DIR/mlruns;
    online: W&B uploads as it goes, MLflow logs to MLFLOW_TRACKING_URI."""


@dataclass
class RolloutConfig:
    """Where the training episodes are played (evaluation episodes always run in the driver)."""

    backend: Literal["inline", "process", "ray"] = "inline"
    """inline = in the driver process; process = local worker processes; ray = Ray actors (local or a cluster)."""
    workers: int = 0
    """Rollout workers. 0 or 1 with backend inline: in the driver process. With process or ray, 0 = one per
    CPU core (of this machine, or of the cluster joined with ray_address); never more than the episodes
    of a generation. The worker count never changes what is learned."""
    ray_address: str | None = None
    """Address of a running Ray cluster to join (HEAD:6379); None starts a local Ray instance."""
    worker_timeout: float = 600.0
    """Seconds a worker may take for one generation's episodes (start-up included) before it is restarted."""
    max_restarts: int = 3
    """Restarts of one worker in a row (crash, kill, timeout) before the run stops with an error."""


@dataclass
class Config:
    algo: Literal["race", "matd3", "facmac", "ea", "merl"] = "race"
    """race = RACE (on MATD3 for continuous tasks, on FACMAC for discrete ones); matd3; facmac; merl = MERL
    (evolved whole team networks + an injected MATD3 learner, continuous tasks); ea = the population alone, no
    gradients."""
    seed: int = 1
    """Seeds python, numpy, torch and the environments; the same seed on the same machine gives the same
    metrics.csv."""
    total_steps: int = 1_000_000
    """Env steps of all teams together."""
    eval_interval: int = 10_000
    """Env steps between two evaluations (a run also ends with one)."""
    eval_episodes: int = 5
    """Greedy episodes per evaluated team and evaluation."""
    torch_threads: int = 1
    """Intra-op threads of PyTorch (1 keeps runs reproducible and leaves a core for the env)."""
    progress: bool = True
    """Show a progress bar (a setting of the session: never saved in config.yaml; `--no-progress` turns it off)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    net: NetConfig = field(default_factory=NetConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    race: RaceConfig = field(default_factory=RaceConfig)
    discrete: DiscreteConfig = field(default_factory=DiscreteConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    device: str = "auto"
    """Where the learner, its optimisers and the replay buffer live: auto (CUDA when available, else the CPU),
    cpu, cuda or cuda:N. Environments, rollout workers and evaluation always act on the CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """The learner's arithmetic: fp32, or bf16 (the forward passes under bfloat16 autocast, float32 master weights,
    optimiser, targets and losses; see `racemarl.precision`); auto = bf16 where the training device multiplies
    bfloat16 natively (a CPU with AVX512-BF16/AMX, a CUDA GPU of compute capability >= 8.0), else fp32. A run
    records the resolved value; runs saved before this setting existed load as fp32. Acting is always float32.
    The default is fp32: bf16 failed the rule of the learning comparison (docs: Performance, Precision)."""
    checkpoint_minutes: float = 5.0
    """Also write checkpoints/latest.pt every this many wall-clock minutes (at the end of a generation or
    between updates), besides every evaluation, so a killed run loses at most this much work (0 = only at
    evaluations). Never changes what is learned."""

    def validate(self, check_task: bool = True) -> Config:
        """Check every value; `check_task=False` skips only whether env.task names a task this process can build
        (reading a run's records needs neither its environment nor a `register_env` made in another process)."""
        checks = [
            (self.algo in ALGOS, f"algo must be one of {', '.join(ALGOS)}"),
            (self.total_steps > 0, "total_steps must be positive"),
            (self.eval_interval > 0, "eval_interval must be positive"),
            (self.eval_episodes > 0, "eval_episodes must be positive"),
            (self.torch_threads > 0, "torch_threads must be positive"),
            (0 <= self.learner.gamma <= 1, "learner.gamma must be in [0, 1]"),
            (0 < self.learner.tau <= 1, "learner.tau must be in (0, 1]"),
            (self.learner.batch_size > 1, "learner.batch_size must be > 1"),
            (self.learner.buffer_size >= self.learner.batch_size, "learner.buffer_size must be >= batch_size"),
            (self.learner.policy_delay >= 1, "learner.policy_delay must be >= 1"),
            (self.learner.updates_per_step >= 0, "learner.updates_per_step must be >= 0"),
            (self.race.pop_size >= 0, "race.pop_size must be >= 0"),
            (0 <= self.race.elite_fraction < 1, "race.elite_fraction must be in [0, 1)"),
            (self.race.tournament_size >= 1, "race.tournament_size must be >= 1"),
            (0 <= self.race.mutation_prob <= 1, "race.mutation_prob must be in [0, 1]"),
            (0 < self.race.mutation_frac <= 1, "race.mutation_frac must be in (0, 1]"),
            (
                self.race.super_mutation_prob + self.race.reset_prob <= 1,
                "race.super_mutation_prob + race.reset_prob must be <= 1",
            ),
            (self.race.operators in ("agent", "row"), "race.operators must be 'agent' or 'row'"),
            (self.race.injection_interval >= 0, "race.injection_interval must be >= 0"),
            (self.race.episodes_per_team >= 1, "race.episodes_per_team must be >= 1"),
            (self.race.vmm_beta == "auto" or self.race.vmm_beta >= 0, "race.vmm_beta must be >= 0 or auto"),
            (self.race.pevfa_teams_per_update >= 1, "race.pevfa_teams_per_update must be >= 1"),
            (0 <= self.race.fitness_mc_prob <= 1, "race.fitness_mc_prob must be in [0, 1]"),
            (self.race.fitness_steps >= 1, "race.fitness_steps must be >= 1"),
            (self.learner.marl_head_init_scale > 0, "learner.marl_head_init_scale must be positive"),
            (self.learner.grad_clip >= 0, "learner.grad_clip must be >= 0 (0 = no clipping)"),
            (
                self.env.max_episode_steps is None or self.env.max_episode_steps > 0,
                "env.max_episode_steps must be positive (or null for the task's own limit)",
            ),
            (0 <= self.discrete.gamma <= 1, "discrete.gamma must be in [0, 1]"),
            (0 <= self.discrete.td_lambda <= 1, "discrete.td_lambda must be in [0, 1]"),
            (self.discrete.batch_episodes >= 1, "discrete.batch_episodes must be >= 1"),
            (
                self.discrete.buffer_episodes >= self.discrete.batch_episodes,
                "discrete.buffer_episodes must be >= discrete.batch_episodes",
            ),
            (self.discrete.updates_per_episode >= 0, "discrete.updates_per_episode must be >= 0"),
            (self.discrete.target_update_interval >= 1, "discrete.target_update_interval must be >= 1"),
            (0 < self.discrete.tau <= 1, "discrete.tau must be in (0, 1]"),
            (
                0 <= self.discrete.epsilon_finish <= self.discrete.epsilon_start <= 1,
                "discrete epsilons must satisfy 0 <= epsilon_finish <= epsilon_start <= 1",
            ),
            (self.discrete.epsilon_anneal_steps >= 1, "discrete.epsilon_anneal_steps must be >= 1"),
            (self.discrete.rnn_hidden >= 1, "discrete.rnn_hidden must be >= 1"),
            (self.env.agent_obsk >= 0, "env.agent_obsk must be >= 0"),
            (self.rollout.backend in ROLLOUT_BACKENDS, f"rollout.backend must be one of {', '.join(ROLLOUT_BACKENDS)}"),
            (self.rollout.workers >= 0, "rollout.workers must be >= 0"),
            (
                self.rollout.backend != "inline" or self.rollout.workers <= 1,
                (
                    f"rollout.workers={self.rollout.workers} needs rollout.backend process or ray "
                    "(inline plays in the driver process: workers 0 or 1)"
                ),
            ),
            (
                self.rollout.ray_address is None or self.rollout.backend == "ray",
                "rollout.ray_address is only used with rollout.backend ray",
            ),
            (
                self.rollout.ray_address is None or self.rollout.ray_address.strip() != "",
                "rollout.ray_address must be HOST:PORT (or null for a local Ray instance)",
            ),
            (self.rollout.worker_timeout > 0, "rollout.worker_timeout must be positive"),
            (self.rollout.max_restarts >= 0, "rollout.max_restarts must be >= 0"),
        ]
        if self.algo in ("race", "ea", "merl"):
            checks.append((self.race.pop_size >= 2, f"algo {self.algo} needs race.pop_size >= 2"))
        checks.append((self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16"))
        checks.append(
            (
                isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
                "device must be auto, cpu, cuda or cuda:N",
            )
        )
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        check_ranges(self, check_task)
        return self

    @property
    def uses_population(self) -> bool:
        return self.algo in ("race", "ea", "merl")

    @property
    def uses_marl(self) -> bool:
        return self.algo in ("race", "matd3", "facmac", "merl")

    @property
    def team_encoders(self) -> bool:
        """Every population team owns its encoders (MERL's whole team networks, or RACE's unshared ablation)."""
        return self.uses_population and (self.algo == "merl" or not self.race.shared_encoder)

    @property
    def uses_representation_losses(self) -> bool:
        return self.algo == "race"


# ---------------------------------------------------------------- ranges of every value (run before any work)

# (dotted key, lower bound, whether the bound itself is allowed); every numeric value not listed must
# only be finite. Lists (hidden widths) are checked item by item and must not be empty.
_RANGES: list[tuple[str, float, bool]] = [
    ("seed", 0, True),
    ("checkpoint_minutes", 0, True),
    ("net.encoder_hidden", 1, True),
    ("net.embed_dim", 1, True),
    ("net.critic_hidden", 1, True),
    ("net.policy_embed_dim", 1, True),
    ("learner.lr_actor", 0, False),
    ("learner.lr_critic", 0, False),
    ("learner.lr_encoder", 0, False),
    ("learner.policy_noise", 0, True),
    ("learner.noise_clip", 0, True),
    ("learner.expl_noise", 0, True),
    ("learner.start_steps", 0, True),
    ("learner.grad_clip", 0, True),
    ("discrete.lr_actor", 0, False),
    ("discrete.lr_critic", 0, False),
    ("discrete.grad_clip", 0, True),
    ("discrete.critic_hidden", 1, True),
    ("discrete.mixer_embed", 1, True),
    ("discrete.hypernet_hidden", 1, True),
    ("discrete.logit_reg", 0, True),
    ("race.mutation_strength", 0, True),
    ("race.super_mutation_prob", 0, True),
    ("race.super_mutation_strength", 0, True),
    ("race.reset_prob", 0, True),
    ("race.value_target_factor", 0, True),
    ("race.mi_hidden", 1, True),
]
MAX_SEED = 2**63 - 1


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted keys of a config class, e.g. `learner.batch_size`."""
    keys = []
    for name, tp in _field_types(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _get(cfg: Config, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def check_ranges(cfg: Config, check_task: bool = True) -> None:
    """Every numeric value finite and in its range, the task a known one; raises ConfigError (one line)."""
    for key in valid_keys():
        value = _get(cfg, key)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key} must be a finite number, got {v}")
    for key, low, inclusive in _RANGES:
        value = _get(cfg, key)
        if isinstance(value, list) and not value:
            raise ConfigError(f"{key} must list at least one width")
        for v in value if isinstance(value, list) else [value]:
            if v is not None and (v < low if inclusive else v <= low):
                raise ConfigError(f"{key} must be {'>=' if inclusive else '>'} {low:g}, got {v}")
    if cfg.seed > MAX_SEED:
        raise ConfigError(f"seed must be <= 2**63 - 1, got {cfg.seed}")
    if not cfg.logging.project.strip():
        raise ConfigError("logging.project must not be empty")
    if not isinstance(cfg.env.task, str) or not cfg.env.task.strip():
        raise ConfigError("env.task must name a task, e.g. mamujoco/HalfCheetah-6x1 (see `racemarl tasks`)")
    if not check_task:
        return
    from racemarl.envs import UnknownTaskError, parse_task

    try:
        parse_task(cfg.env.task)
    except UnknownTaskError as e:
        raise ConfigError(f"env.task: {e}") from None
