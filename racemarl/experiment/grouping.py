"""Grouping runs into experiments (for plot, table and export): runs that differ only in the seed and in
settings that do not change what is learned (`GROUPING_IGNORES`) are samples of one experiment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from racemarl.config import Config
from racemarl.records.runs import Run, flatten

# Settings that never change what a run learns or how it is measured; runs differing only in these (and
# the seed) are samples of one experiment. Everything else that differs splits the runs into groups.
# `torch_threads`, `device` and `net.fast_tanh` (tanh as 2 sigmoid(2x) - 1) compute the same functions with
# other rounding: a run's numbers change, the algorithm does not (`net.fast_tanh` also reads false from
# configs saved before it existed, so without it an old seed and a new one of the same experiment would split).
GROUPING_IGNORES = (
    "seed",
    "total_steps",
    "eval_interval",
    "torch_threads",
    "device",
    "net.fast_tanh",
    "checkpoint_minutes",
    "progress",
    "rollout.*",
    "logging.*",
)


def grouping_settings(run: Run) -> dict:
    """The settings that define a run's experiment (everything but GROUPING_IGNORES)."""
    flat = flatten(to_dict_config(run.config))
    out = {}
    for k, v in flat.items():
        if k in GROUPING_IGNORES or any(k.startswith(g[:-1]) for g in GROUPING_IGNORES if g.endswith("*")):
            continue
        out[k] = tuple(v) if isinstance(v, list) else v
    out["diverged"] = run.diverged
    return out


def to_dict_config(cfg: Config) -> dict:
    from racemarl.config import to_dict

    return to_dict(cfg)


def _value_text(v) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


@dataclass
class Grouping:
    """How runs were grouped: groups keyed (task, label); the settings that tell the groups apart."""

    groups: dict[tuple[str, str], list[Run]]
    differing: list[str]  # setting keys (besides task and algo) whose values differ between groups

    def note(self) -> str:
        n_runs = sum(len(v) for v in self.groups.values())
        what = (
            f"groups differ in {', '.join(self.differing)}"
            if self.differing
            else "the groups differ only in task and algo"
        )
        return (
            f"{n_runs} run(s) in {len(self.groups)} group(s): runs are pooled as seeds only when every setting "
            f"but {', '.join(GROUPING_IGNORES)} is equal; {what}"
        )


def grouping(runs: list[Run]) -> Grouping:
    """Runs grouped by task, algo and every other setting except GROUPING_IGNORES (members sorted by seed,
    then path). A group's label is its algo, followed by the settings that differ between groups, and
    '(diverged)' for runs that stopped on a non-finite loss."""
    settings = {id(r): grouping_settings(r) for r in runs}
    keys = sorted({k for s in settings.values() for k in s} - {"env.task", "algo", "diverged"})
    differing = [k for k in keys if len({_value_text(s.get(k)) for s in settings.values()}) > 1]
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        st = settings[id(run)]
        parts = [run.algo] + [f"{k}={_value_text(st.get(k))}" for k in differing]
        if run.diverged:
            parts.append("(diverged)")
        groups.setdefault((run.task, " ".join(parts)), []).append(run)
    ordered = {k: sorted(v, key=lambda r: (r.seed, str(r.path))) for k, v in sorted(groups.items())}
    return Grouping(ordered, differing)


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (task, label), see `grouping`; the label is the algo when nothing else differs."""
    return grouping(runs).groups


def groups_without(runs: list[Run], metric: str) -> list[str]:
    """'task label' of the groups none of whose runs has a value of `metric` (e.g. win rates on MaMuJoCo)."""
    return [
        f"{task} {label}"
        for (task, label), members in group_runs(runs).items()
        if not any(run.series(metric)[0] for run in members)
    ]


def duplicate_seeds(runs: list[Run]) -> list[str]:
    """Warnings for seeds that occur in more than one run directory of the same group."""
    out = []
    for (task, label), members in group_runs(runs).items():
        seen: dict[int, list[Path]] = {}
        for run in members:
            seen.setdefault(run.seed, []).append(run.path)
        out += [
            f"{label} on {task} seed {seed} appears {len(ps)} times ({', '.join(map(str, ps))}); "
            f"each counts as a separate sample"
            for seed, ps in seen.items()
            if len(ps) > 1
        ]
    return out
