"""An AMC-style DDPG agent (He et al., "AMC: AutoML for Model Compression", 2018).

The agent walks the layer units (a coupling group with its layers, or a lone layer) in
graph order. For each it sees an embedding of the unit and of the choices so far, and acts
with a continuous action in [0, 1]^3: pruning ratio, bit-width compression and rank
compression, each mapped to the nearest allowed value. The action wall keeps the remaining
units able to meet the latency budget at their fastest choices, measured with the latency
table (not FLOPs). The
distilled metric told back is the reward of every step of the episode; infeasible and
failed outcomes get a penalty. Proposals still live in the Optuna study as fixed-parameter
trials, so the report and resume read them like any other searcher's.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import optuna
import torch
from torch import nn

from autocompress._io import atomic_torch_save
from autocompress.errors import UserError
from autocompress.inventory import LayerInventory
from autocompress.search._base import Outcome
from autocompress.search._optuna import TrialStore
from autocompress.spaces import Policy, SearchSpace

__all__ = ["AMCConfig", "AMCSearcher"]

STATE_SCHEMA = 1
ACTIONS = 3  # pruning ratio, bit-width compression, rank compression
STATE_DIM = 14


@dataclass(frozen=True)
class AMCConfig:
    """DDPG settings. Defaults suit a few hundred episodes on a few tens of units."""

    warmup_episodes: int = 12  # random episodes before the actor acts
    hidden: int = 64
    actor_lr: float = 1e-3
    critic_lr: float = 2e-3
    gamma: float = 0.5  # every step gets the episode's reward; the critic bootstraps on its targets
    tau: float = 0.02  # soft update of the target networks
    batch_size: int = 64
    buffer_size: int = 4096
    updates_per_episode: int = 16
    noise_sigma: float = 0.4  # truncated-normal exploration noise, decaying per episode after warm-up
    noise_decay: float = 0.98
    failure_reward: float = -1.0  # reward for infeasible, failed and non-finite outcomes
    baseline_momentum: float = 0.9  # moving-average reward baseline subtracted from rewards
    saturation_penalty: float = 1e-3  # keeps the actor's pre-sigmoid outputs finite, so its gradient never dies

    def __post_init__(self) -> None:
        if self.warmup_episodes < 0 or self.batch_size < 1 or self.buffer_size < self.batch_size:
            raise ValueError(f"invalid AMC settings: {self}")
        if not 0.0 <= self.gamma < 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"gamma must be in [0, 1) and tau in (0, 1], but got {self.gamma}, {self.tau}.")


@dataclass(frozen=True)
class _Unit:
    name: str
    prune: str | None
    bits: tuple[str, ...]
    rank: tuple[str, ...]
    static: tuple[float, ...]  # log channels, kernel, stride, FLOPs share

    @property
    def dims(self) -> tuple[tuple[int, str], ...]:
        """(action index, dimension name) pairs this unit sets."""
        return tuple([(0, self.prune)] if self.prune else []) + tuple((1, d) for d in self.bits) + tuple((2, d) for d in self.rank)


def _units(space: SearchSpace, inventory: LayerInventory) -> list[_Unit]:
    """Layer units in graph order: a pruned group with its layers, or a lone layer."""
    members: dict[str, list[str]] = {}
    for name, layer in inventory.layers.items():
        key = layer.out_group if layer.out_group and f"prune/{layer.out_group}" in space.domains else name
        members.setdefault(key, []).append(name)
    for dim in space.domains:  # a pruned group none of whose layers the walk reached
        if dim.startswith("prune/") and dim[6:] not in members:
            members[dim[6:]] = []
    total_flops = max(1, sum(layer.flops for layer in inventory.layers.values()))
    units = []
    for key, layers in members.items():
        prune = f"prune/{key}" if f"prune/{key}" in space.domains else None
        bits = tuple(f"bits/{n}" for n in layers if f"bits/{n}" in space.domains)
        rank = tuple(f"rank/{n}" for n in layers if f"rank/{n}" in space.domains)
        if not (prune or bits or rank):
            continue
        ls = [inventory.layers[n] for n in layers]
        channels = inventory.groups[key].channels if key in inventory.groups else max((l.out_channels for l in ls), default=1)
        static = (
            math.log2(max(channels, 1)) / 12.0,
            max((max(l.kernel_size) for l in ls), default=1) / 7.0,
            max((max(l.stride) for l in ls), default=1) / 2.0,
            sum(l.flops for l in ls) / total_flops,
        )
        units.append(_Unit(key, prune, bits, rank, static))
    return units


def _order(dimension: str, domain: tuple) -> list:
    """A domain from least to most compression."""
    return sorted(domain) if dimension.startswith("prune/") else sorted(domain, reverse=True)


@contextmanager
def _one_thread() -> Iterator[None]:
    """The agent's networks are tiny: more threads only contend with each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mlp(inputs: int, hidden: int, outputs: int, last: nn.Module | None) -> nn.Sequential:
    head = nn.Linear(hidden, outputs)
    nn.init.uniform_(head.weight, -3e-3, 3e-3)  # DDPG: start near the middle of the action range
    nn.init.zeros_(head.bias)
    layers: list[nn.Module] = [nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), head]
    return nn.Sequential(*layers, *([last] if last is not None else []))


class AMCSearcher(TrialStore):
    """DDPG over layer units; its trials are fixed-parameter trials of the Optuna study.

    ``latency_us(policy)`` is the latency table's prediction and ``budget_us`` the budget;
    both shape the state and the action wall. The agent learns from the outcomes of its own
    proposals; queued trials (seeds) and ``ask_policy`` trials (repairs) are told but not
    learned from. With ``state_path`` set, the agent's whole state is written atomically
    there after every tell.
    """

    def __init__(
        self, study: optuna.Study, space: SearchSpace, latency_us: Callable[[Policy], float], budget_us: float,
        higher_is_better: bool, seed: int, config: AMCConfig = AMCConfig(), objectives: Sequence[str] = ("metric", "latency"),
        state_path: Path | None = None,
    ) -> None:
        super().__init__(study, space, objectives)
        self.latency_us = latency_us
        self.budget_us = float(budget_us)
        self.sign = 1.0 if higher_is_better else -1.0
        self.seed = seed
        self.config = config
        self.state_path = state_path
        self.units = _units(space, space.inventory)
        self._orders = {d: _order(d, dom) for d, dom in space.domains.items()}
        base = space.to_params(space.baseline())
        self._base_params = base
        self._extreme_params = space.to_params(space.extreme())
        self._fastest_params = space.to_params(space.fastest(latency_us)[0])
        self._base_us = max(latency_us(space.from_params(base)), 1e-9)
        self._unit_share = []
        for unit in self.units:
            squeezed = {**base, **{d: self._extreme_params[d] for _, d in unit.dims}}
            self._unit_share.append((self._base_us - latency_us(space.from_params(squeezed))) / self._base_us)

        with torch.random.fork_rng(devices=[]):  # own the initialization without touching the global generator
            torch.manual_seed(seed)
            h = config.hidden
            self.actor = _mlp(STATE_DIM, h, ACTIONS, nn.Sigmoid())
            self.critic = _mlp(STATE_DIM + ACTIONS, h, 1, None)
            self.actor_target = _mlp(STATE_DIM, h, ACTIONS, nn.Sigmoid())
            self.critic_target = _mlp(STATE_DIM + ACTIONS, h, 1, None)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        n = config.buffer_size
        self.buffer = {
            "state": torch.zeros(n, STATE_DIM), "action": torch.zeros(n, ACTIONS), "reward": torch.zeros(n),
            "next_state": torch.zeros(n, STATE_DIM), "done": torch.zeros(n),
        }
        self.buffer_count = 0
        self.episodes_asked = 0
        self.episodes_told = 0
        self.reward_baseline: float | None = None
        self.reward_var = 0.0
        self._episodes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # trial -> (states, actions), awaiting tell

    @classmethod
    def create(
        cls, space: SearchSpace, storage: str | None, latency_us: Callable[[Policy], float], budget_us: float,
        higher_is_better: bool, seed: int, objectives: Sequence[str] = ("metric", "latency"), state_path: Path | None = None,
        config: AMCConfig = AMCConfig(),
    ) -> "AMCSearcher":
        study = cls.open_study(storage, optuna.samplers.RandomSampler(seed=seed), higher_is_better, objectives)
        searcher = cls(study, space, latency_us, budget_us, higher_is_better, seed, config, objectives, state_path)
        if state_path is not None and Path(state_path).is_file():
            searcher.load_state_dict(torch.load(state_path, weights_only=True))
        return searcher

    # -- the walk ---------------------------------------------------------------------------

    @property
    def noise_sigma(self) -> float:
        return self.config.noise_sigma * self.config.noise_decay ** max(0, self.episodes_told - self.config.warmup_episodes)

    def _apply(self, params: dict[str, Any], unit: _Unit, action: torch.Tensor) -> None:
        for k, dim in unit.dims:
            order = self._orders[dim]
            params[dim] = order[int(round(float(action[k]) * (len(order) - 1)))]

    def _state(self, t: int, prev: torch.Tensor, chosen: dict[str, Any]) -> torch.Tensor:
        """Unit ``t``'s embedding given the choices of the units before it (in ``chosen``)."""
        unit = self.units[t]
        rest = [d for u in self.units[t:] for _, d in u.dims]
        at_base = self.latency_us(self.space.from_params({**chosen, **{d: self._base_params[d] for d in rest}}))
        at_fastest = self.latency_us(self.space.from_params({**chosen, **{d: self._fastest_params[d] for d in rest}}))
        features = [
            t / max(1, len(self.units) - 1), *unit.static, self._unit_share[t],
            float(unit.prune is not None), float(bool(unit.bits)), float(bool(unit.rank)), *prev.tolist(),
            1.0 - at_base / self._base_us, max(-1.0, min(1.0, (self.budget_us - at_fastest) / self._base_us)),
        ]
        return torch.tensor(features, dtype=torch.float32)

    def _wall(self, t: int, params: dict[str, Any], action: torch.Tensor) -> torch.Tensor:
        """AMC's action wall: the least push toward full compression that leaves the units
        after ``t`` able to meet the budget at their fastest choices (by the table). When no
        push fits, the push with the lowest latency."""
        later = {d: self._fastest_params[d] for u in self.units[t + 1:] for _, d in u.dims}
        best: tuple[float, torch.Tensor] | None = None
        for push in (0.0, 0.25, 0.5, 0.75, 1.0):
            candidate = action + push * (1.0 - action)
            trial = dict(params)
            self._apply(trial, self.units[t], candidate)
            us = self.latency_us(self.space.from_params({**trial, **later}))
            if us <= self.budget_us:
                return candidate
            if best is None or us < best[0]:
                best = (us, candidate)
        assert best is not None
        return best[1]

    def _noisy(self, mean: torch.Tensor) -> torch.Tensor:
        """Truncated normal on [0, 1] around ``mean`` by inverse CDF (no rejection loop)."""
        sigma = max(self.noise_sigma, 1e-6)
        normal = torch.distributions.Normal(0.0, 1.0)
        lo, hi = normal.cdf((0.0 - mean) / sigma), normal.cdf((1.0 - mean) / sigma)
        u = lo + (hi - lo) * torch.rand(ACTIONS, generator=self.generator)
        return (mean + sigma * torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6))).clamp(0.0, 1.0)

    def _episode(self, explore: bool) -> tuple[Policy, torch.Tensor, torch.Tensor]:
        params = dict(self._base_params)
        states, actions = [], []
        prev = torch.zeros(ACTIONS)
        for t, unit in enumerate(self.units):
            state = self._state(t, prev, params)
            if explore and self.episodes_asked < self.config.warmup_episodes:
                action = torch.rand(ACTIONS, generator=self.generator)
            else:
                with torch.no_grad():
                    action = self.actor(state)
                if explore:
                    action = self._noisy(action)
            action = self._wall(t, params, action)
            self._apply(params, unit, action)
            states.append(state)
            actions.append(action)
            prev = action
        return self.space.from_params(params), torch.stack(states), torch.stack(actions)

    def greedy_policy(self) -> Policy:
        """The actor's policy without exploration noise."""
        with _one_thread():
            return self._episode(explore=False)[0]

    # -- the Searcher contract --------------------------------------------------------------

    def ask(self) -> tuple[int, Policy] | None:
        if self.has_queued():  # seeds queued in the study go first, as for every searcher
            return self.open_sampled()
        with _one_thread():
            policy, states, actions = self._episode(explore=True)
        self.episodes_asked += 1
        trial_id = self.open_fixed(policy, {"amc_episode": self.episodes_asked})
        self._episodes[trial_id] = (states, actions)
        return trial_id, policy

    def ask_policy(self, policy: Policy, attrs: Mapping[str, Any] = {}) -> int:
        return self.open_fixed(policy, attrs)

    def tell(self, trial_id: int, outcome: Outcome) -> None:
        t0 = time.perf_counter()
        episode = self._episodes.pop(trial_id, None)
        if episode is not None:
            with _one_thread():
                self._learn(*episode, self._reward(outcome))
            if self.state_path is not None:
                atomic_torch_save(self.state_dict(), self.state_path)
        self.finish(trial_id, outcome, time.perf_counter() - t0)

    def _reward(self, outcome: Outcome) -> float:
        if outcome.status == "completed" and outcome.metric is not None and math.isfinite(outcome.metric):
            return self.sign * outcome.metric
        return self.config.failure_reward

    def _learn(self, states: torch.Tensor, actions: torch.Tensor, reward: float) -> None:
        m = self.config.baseline_momentum
        if self.reward_baseline is None:
            self.reward_baseline, self.reward_var = reward, 0.0
        else:
            delta = reward - self.reward_baseline
            self.reward_baseline += (1 - m) * delta
            self.reward_var = m * (self.reward_var + (1 - m) * delta * delta)
        advantage = (reward - self.reward_baseline) / (math.sqrt(self.reward_var) + 1e-3)
        n = len(states)
        next_states = torch.cat([states[1:], torch.zeros(1, STATE_DIM)])
        done = torch.zeros(n)
        done[-1] = 1.0
        for i in range(n):
            slot = self.buffer_count % self.config.buffer_size
            for key, value in (("state", states[i]), ("action", actions[i]), ("reward", advantage),
                               ("next_state", next_states[i]), ("done", done[i])):
                self.buffer[key][slot] = value
            self.buffer_count += 1
        self.episodes_told += 1
        filled = min(self.buffer_count, self.config.buffer_size)
        if filled < self.config.batch_size:
            return
        for _ in range(self.config.updates_per_episode):
            idx = torch.randint(filled, (self.config.batch_size,), generator=self.generator)
            s, a, r = self.buffer["state"][idx], self.buffer["action"][idx], self.buffer["reward"][idx]
            s2, d = self.buffer["next_state"][idx], self.buffer["done"][idx]
            with torch.no_grad():
                target = r + self.config.gamma * (1 - d) * self.critic_target(torch.cat([s2, self.actor_target(s2)], 1)).squeeze(1)
            critic_loss = nn.functional.mse_loss(self.critic(torch.cat([s, a], 1)).squeeze(1), target)
            self.critic_opt.zero_grad()
            critic_loss.backward()
            self.critic_opt.step()
            logits = self.actor[:-1](s)
            actor_loss = -self.critic(torch.cat([s, torch.sigmoid(logits)], 1)).mean()
            actor_loss = actor_loss + self.config.saturation_penalty * logits.pow(2).mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            with torch.no_grad():
                for net, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                    for p, tp in zip(net.parameters(), target_net.parameters()):
                        tp.mul_(1 - self.config.tau).add_(self.config.tau * p)

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, replay buffer, generator and counters (tensors and plain data,
        so ``torch.load(weights_only=True)`` reads it back)."""
        return {
            "schema": STATE_SCHEMA, "searcher": "amc", "seed": self.seed, "config": asdict(self.config),
            "units": [u.name for u in self.units],
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "buffer": {k: v.clone() for k, v in self.buffer.items()}, "buffer_count": self.buffer_count,
            "generator": self.generator.get_state(), "episodes_asked": self.episodes_asked,
            "episodes_told": self.episodes_told, "reward_baseline": self.reward_baseline, "reward_var": self.reward_var,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("schema") != STATE_SCHEMA or state.get("searcher") != "amc":
            raise UserError("The saved AMC agent state has another format; delete amc_state.pt or use a new --run-dir.")
        if state.get("seed") != self.seed or state.get("units") != [u.name for u in self.units] or state.get("config") != asdict(self.config):
            raise UserError(
                "The saved AMC agent state was made with another seed, space or settings; "
                "resume with the same options or use a new --run-dir."
            )
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.buffer = {k: v.clone() for k, v in state["buffer"].items()}
        self.buffer_count = int(state["buffer_count"])
        self.generator.set_state(state["generator"])
        self.episodes_asked = int(state["episodes_asked"])
        self.episodes_told = int(state["episodes_told"])
        self.reward_baseline = state["reward_baseline"]
        self.reward_var = float(state["reward_var"])
        self._episodes.clear()  # trials open when the state was saved were abandoned with their process
