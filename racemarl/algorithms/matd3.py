"""MATD3: centralised twin critic, TD3 target smoothing, delayed updates of the MARL team's
linear heads and of the shared per-agent encoders.

The actors are built from the parts RACE uses (shared encoders + linear team heads), so RACE
(`racemarl.algorithms.race.RaceLearner`) is this learner plus extra losses supplied through two hooks:
`extra_critic_losses` (more value functions trained each update) and `extra_encoder_losses`
(more terms in the encoder loss at each delayed actor update).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from racemarl.algorithms.base import Learner, NonFiniteLossError, loss_sum, section  # noqa: F401 (re-exported)
from racemarl.config import Config
from racemarl.data.buffer import Batch
from racemarl.envs.base import EnvSpec
from racemarl.nets.critics import TwinCritic
from racemarl.nets.policy import ActionLayout, AgentEncoders, heads_forward, init_heads


@contextlib.contextmanager
def frozen(modules: list[nn.Module]) -> Iterator[None]:
    """No parameter gradients for `modules` inside the block: they are only read (inputs still get gradients)."""
    with frozen_params([p for m in modules for p in m.parameters()]):
        yield


@contextlib.contextmanager
def frozen_params(params: list[nn.Parameter]) -> Iterator[None]:
    """`frozen` for a list of parameters (no walk over the modules: cheaper at every update)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def soft_update(target: nn.Module | torch.Tensor, source: nn.Module | torch.Tensor, tau: float | torch.Tensor) -> None:
    """Polyak averaging; `tau` a number or a 0-dim tensor on the parameters' device (no host read)."""
    with torch.no_grad():
        if isinstance(target, torch.Tensor):
            assert isinstance(source, torch.Tensor)
            target.lerp_(source, tau)
            return
        assert isinstance(source, nn.Module)
        targets: list[torch.Tensor] = list(target.parameters())
        sources: list[torch.Tensor] = list(source.parameters())
        if isinstance(tau, torch.Tensor):
            torch._foreach_lerp_(targets, sources, [tau] * len(targets))
        else:
            torch._foreach_lerp_(targets, sources, tau)


def tune_allocator() -> None:
    """Keep freed memory in the process heap (glibc malloc) instead of returning it to the OS.

    An update allocates and frees many 1-3 MB activations. By default glibc serves such blocks with
    mmap (or trims the heap after freeing them), so each new activation page-faults on first touch:
    about 300-450 faults and 8% of a RACE update's time on HalfCheetah-6x1. Raising the mmap and trim
    thresholds lets the heap reuse them. Process-wide, idempotent, changes no computed value; a no-op
    where glibc's mallopt is not available.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 2**20)  # blocks above 32 MB (e.g. the replay buffer) still use mmap
        libc.mallopt(m_trim_threshold, 256 * 2**20)
    except (OSError, AttributeError):
        pass


_ALLOCATOR_TUNED = False


class MATD3(Learner):
    # buffers (register_buffer), typed for the type checker
    marl_heads_targ: torch.Tensor

    def __init__(self, spec: EnvSpec, cfg: Config, generator: torch.Generator):
        super().__init__()
        tune_allocator()
        self.spec, self.cfg, self.lcfg = spec, cfg, cfg.learner
        self.generator = generator  # target-smoothing noise
        self.layout = ActionLayout(spec)
        self.max_obs = max(spec.obs_dims)
        self.encoders = AgentEncoders(
            spec.obs_dims, cfg.net.encoder_hidden, cfg.net.embed_dim, fast_tanh=cfg.net.fast_tanh
        )
        self.encoders_targ = copy.deepcopy(self.encoders).requires_grad_(False)
        heads = init_heads(1, spec.n_agents, self.layout.max_act, cfg.net.embed_dim, self.layout.row_mask, generator)[0]
        heads = heads * cfg.learner.marl_head_init_scale
        self.marl_heads = nn.Parameter(heads)  # [N, A, d+1]
        self.register_buffer("marl_heads_targ", heads.clone())
        self.critic = TwinCritic(
            spec.state_dim, self.layout.joint_dim, cfg.net.critic_hidden, layer_norm=cfg.net.critic_layer_norm
        )
        self.critic_targ = copy.deepcopy(self.critic).requires_grad_(False)
        lc = self.lcfg
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=lc.lr_critic, fused=True)
        self.opt_actor = torch.optim.Adam([self.marl_heads], lr=lc.lr_actor, fused=True)
        self.opt_encoder = torch.optim.Adam(self.encoders.parameters(), lr=lc.lr_encoder, fused=True)
        self.n_updates = 0
        self.pop_encoders: dict[str, torch.Tensor] | None = None  # set per update (unshared ablation)
        self._target_lists: tuple[list, list] | None = None  # update_targets' flat lists, built at first use
        self._critic_param_list: list[nn.Parameter] | None = None

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, heads: torch.Tensor, encoders: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Deterministic actions of T teams, each on its own observation.

        obs `[T, N, max_obs]`, heads `[T, N, A, d+1]` -> padded actions `[T, N, A]`. `encoders`
        (unshared-encoder ablation) holds each team's own encoder parameters `[T, N, ...]`; by
        default every team reads the shared encoders.
        """
        if encoders is None:
            z = self.encoders(obs.transpose(0, 1))  # [N, T, d]
        else:
            z = self.encode_teams(obs[:, :, None, :], encoders)[:, :, 0].transpose(0, 1)
        pre = torch.einsum("ntd,tnad->nta", z, heads[..., :-1]) + heads[..., -1].transpose(0, 1)
        return self.layout.squash(pre).transpose(0, 1)

    def encode_teams(self, obs: torch.Tensor, encoders: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each team's own encoders on its observations: obs `[K, N, B, max_obs]`, parameters
        `{name: [K, N, ...]}` -> z `[K, N, B, d]` (one grouped pass over all K * N encoders)."""
        k, n, b, _ = obs.shape
        flat = {name: p.reshape(k * n, *p.shape[2:]) for name, p in encoders.items()}
        z = torch.func.functional_call(self.encoders, flat, (obs.reshape(k * n, b, -1),))
        return z.view(k, n, b, -1)

    def fresh_encoder_params(self, n_teams: int) -> dict[str, torch.Tensor]:
        """Newly initialised encoders for `n_teams` teams, stacked `{name: [n_teams, N, ...]}`."""
        fresh = [
            AgentEncoders(self.spec.obs_dims, self.cfg.net.encoder_hidden, self.cfg.net.embed_dim)
            for _ in range(n_teams)
        ]
        return {
            name: torch.stack([dict(e.named_parameters())[name].detach() for e in fresh])
            for name, _ in self.encoders.named_parameters()
        }

    def encoder_params(self) -> dict[str, torch.Tensor]:
        """The MARL team's encoder parameters as a one-team stack `{name: [1, N, ...]}` (detached)."""
        return {name: p.detach()[None].clone() for name, p in self.encoders.named_parameters()}

    def policy(self, z: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Flat joint actions of one team `[N, A, d+1]` -> `[B, U]`, or K teams -> `[K, B, U]`."""
        return self.layout.flatten(self.layout.squash(heads_forward(z, heads)))

    def smoothed_policy(self, z: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """TD3 target policy smoothing: clipped Gaussian noise on the target action."""
        a = self.layout.squash(heads_forward(z, heads))
        noise = torch.randn(a.shape, generator=self.generator, device=a.device) * self.lcfg.policy_noise
        noise = noise.clamp(-self.lcfg.noise_clip, self.lcfg.noise_clip) * self.layout.scale
        return self.layout.flatten(self.layout.clamp(a + noise))

    # ------------------------------------------------------------------ learning
    def update(
        self,
        batch: Batch,
        population: torch.Tensor | None = None,
        pop_encoders: dict[str, torch.Tensor] | None = None,
        marl_batch: None = None,
    ) -> dict[str, torch.Tensor]:
        """One gradient update. `population` `[P, N, A, d+1]` holds the evolved teams' heads and
        `pop_encoders` their own encoders when encoders are not shared (both used by RACE only), on the
        learner's device.

        No host synchronisation (see `Learner`): returns the losses as detached 0-dim tensors, and a
        non-finite batch or loss skips the steps and target updates on the device and is recorded there.

        Sections carry `torch.profiler.record_function` labels (critic_target, critic_loss, ...,
        critic_backward, critic_optim, encoder_forward, actor_loss, actor_backward, actor_optim,
        target_update) so a profile splits an update by loss; they cost microseconds when no profiler runs.
        `marl_batch` (a separate batch for the MARL critic) is for the discrete learner only.
        """
        if marl_batch is not None:
            raise ValueError("a separate MARL batch (discrete.marl_data=own) is for discrete tasks only")
        self.pop_encoders = pop_encoders
        with self.amp():
            return self._update(batch, population)

    def _update(self, batch: Batch, population: torch.Tensor | None) -> dict[str, torch.Tensor]:
        lc = self.lcfg
        ok = self.batch_ok([getattr(batch, f.name) for f in dataclasses.fields(batch)])
        not_done = 1.0 - batch.terminated
        with torch.no_grad(), section("critic_target"):
            z_next = self.encoders_targ(batch.next_obs)
            a_next = self.smoothed_policy(z_next, self.marl_heads_targ)
            q_next = self.critic_values(self.critic_targ, batch.next_obs, batch.next_state, a_next).min(0).values
            y = batch.reward + lc.gamma * not_done * q_next
        with section("critic_loss"):
            q = self.critic_values(self.critic, batch.obs, batch.state, batch.action)
            critic_loss = (q - y).pow(2).mean(1).sum()
        losses: dict[str, torch.Tensor] = {"critic": critic_loss}
        losses.update(self.extra_critic_losses(batch, z_next, q_next, population))
        ok = self._step(loss_sum(losses), self.critic_optimizers(), losses, "critic", ok)

        if (self.n_updates + 1) % lc.policy_delay == 0:
            with frozen_params(self._critic_params()):
                enc_losses = self.encoder_losses(batch, population)
                total = loss_sum(enc_losses)
                ok = self._step(total, self.encoder_optimizers(), enc_losses, "actor", ok)
            losses.update(enc_losses)
            with section("target_update"):
                self.update_targets(ok)
        self.n_updates += 1
        return {k: v.detach() for k, v in losses.items()}

    def encoder_losses(self, batch: Batch, population: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The terms of the MARL heads' and the encoders' loss: the actor term -Q_psi(s, pi_marl(z)) and the hook's
        extra terms (RACE: VFM, beta * VMM). The critics are read, not trained (the caller freezes them)."""
        with section("encoder_forward"):
            z = self.encoders(batch.obs)
        with section("actor_loss"):
            a = self.policy(z, self.marl_heads)
            actor_loss = -self.actor_values(self.critic, batch.obs, batch.state, a).mean()
        return {"actor": actor_loss, **self.extra_encoder_losses(batch, z, population)}

    def _step(
        self,
        loss: torch.Tensor,
        optimizers: list[torch.optim.Optimizer],
        parts: dict[str, torch.Tensor],
        label: str = "step",
        ok: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.apply_loss(loss, optimizers, parts, self.lcfg.grad_clip, label, ok)

    def update_targets(self, ok: torch.Tensor | None = None) -> None:
        """Polyak averaging of every (target, online) pair of `target_pairs`, in one foreach call; no move where
        `ok` (a 0-dim bool tensor: the update was finite) is false."""
        if self._target_lists is None:
            targets: list[torch.Tensor] = []
            sources: list[torch.Tensor] = []
            for t, s in self.target_pairs():
                targets += [t] if isinstance(t, torch.Tensor) else list(t.parameters())
                sources += [s] if isinstance(s, torch.Tensor) else list(s.parameters())
            self._target_lists = (targets, sources)
        targets, sources = self._target_lists
        with torch.no_grad():
            if ok is None:
                torch._foreach_lerp_(targets, sources, self.lcfg.tau)
            else:
                torch._foreach_lerp_(targets, sources, [self.target_weight(self.lcfg.tau, ok)] * len(targets))

    def target_pairs(self) -> list[tuple[nn.Module | torch.Tensor, nn.Module | torch.Tensor]]:
        """(target, online) modules or tensors that `update_targets` moves towards the online ones."""
        return [
            (self.critic_targ, self.critic),
            (self.encoders_targ, self.encoders),
            (self.marl_heads_targ, self.marl_heads),
        ]

    def _critic_params(self) -> list[nn.Parameter]:
        """The parameters of `critic_modules()`, listed once."""
        if self._critic_param_list is None:
            self._critic_param_list = [p for m in self.critic_modules() for p in m.parameters()]
        return self._critic_param_list

    # ------------------------------------------------------------------ hooks for FACMAC and RACE
    def critic_values(
        self, critic: nn.Module, obs: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        """Q values `[heads, B]` of joint actions `[B, U]`; the centralised twin critic reads the state only
        (FACMAC's mixed per-agent critics also read each agent's observation `[N, B, max_obs]`)."""
        return critic(state, action)

    def actor_values(
        self, critic: nn.Module, obs: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        """`critic_values(...)[0]`, `[B]`, the value the actor loss reads. With the twin critic (critic_values
        not overridden) only the first twin is computed: the same values at half the work."""
        if type(self).critic_values is MATD3.critic_values and isinstance(critic, TwinCritic):
            return critic.first(state, action)
        return self.critic_values(critic, obs, state, action)[0]

    # ------------------------------------------------------------------ checkpointing
    def load_full_state(self, sd: dict) -> None:
        super().load_full_state(sd)
        self._target_lists, self._critic_param_list = None, None  # (loading copies in place; rebuilt anyway)
