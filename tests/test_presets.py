"""The paper's presets (configs/paper), the paper grids of `racemarl sweep --preset`, SMAX unit mixes."""

import json
import re

import pytest

from racemarl import config as config_mod
from racemarl.cli import main
from racemarl.config import ConfigError, build_config, load_yaml
from racemarl.envs import UnknownTaskError, parse_task
from racemarl.envs.smax_maps import SMAX_UNBUILDABLE_PAPER_MAPS, parse_unit_mix
from racemarl.experiment.presets import GRIDS, PAPER_DIR, paper_grid
from racemarl.experiment.sweep import SweepSpec
from tests.conftest import TINY

PAPER_TASKS = {  # shared/spec/paper-results.md: Figure 2 (MA-MuJoCo) and the Figure 3 maps SMAX can build
    "paper-mamujoco": {
        "mamujoco/HalfCheetah-2x3",
        "mamujoco/HalfCheetah-6x1",
        "mamujoco/Hopper-3x1",
        "mamujoco/Ant-2x4",
        "mamujoco/Ant-2x4d",
        "mamujoco/Ant-4x2",
        "mamujoco/Humanoid-9|8",
        "mamujoco/HumanoidStandup-9|8",
    },
    "paper-smax": {"smax/2s3z", "smax/3s5z", "smax/3s_vs_3z"},
}
BUDGETS = {"smax/2s3z": 1_000_000, "smax/3s5z": 2_000_000, "smax/3s_vs_3z": 1_000_000}  # Figure 3


@pytest.mark.parametrize("grid", list(GRIDS))
def test_every_preset_loads_validates_and_names_its_task(grid):
    g = paper_grid(grid)
    assert set(g.presets) == PAPER_TASKS[grid]
    for task in g.presets:
        cfg = build_config(g.preset_path(task))
        assert cfg.env.task == task and parse_task(task)[0] == task.split("/")[0]
        assert cfg.total_steps == BUDGETS.get(task, 1_000_000)
        if task.startswith("smax/"):
            assert (cfg.eval_interval, cfg.eval_episodes) == (10_000, 32)  # the official SMAC code's schedule


def test_every_preset_value_cites_a_source_or_says_there_is_none():
    files = sorted(PAPER_DIR.glob("*.yaml"))
    assert len(files) == sum(len(g.presets) for g in GRIDS.values())
    for f in files:
        for line in f.read_text().splitlines():
            if re.match(r"\s*[a-z_]+:\s*\S", line):  # a key with a value (not a section header)
                comment = line.partition("#")[2]
                assert comment.strip(), f"{f.name}: no source for {line.strip()!r}"
                sources = ("[paper]", "[spec]", "[tuned]", "no source", "the grid sets", "SMAX's own limit")
                assert any(s in comment for s in sources), f"{f.name}: {line.strip()!r}"


def test_paper_grid_algorithms_include_merl_where_it_runs(monkeypatch):
    # MERL (continuous only) joins the MA-MuJoCo grid when racemarl has it, never the SMAX one
    monkeypatch.setattr(config_mod, "ALGOS", tuple(a for a in config_mod.ALGOS if a != "merl"))
    assert paper_grid("paper-mamujoco").available_algos() == ["race", "matd3", "facmac", "ea"]
    monkeypatch.setattr(config_mod, "ALGOS", (*config_mod.ALGOS, "merl"))
    assert paper_grid("paper-mamujoco").available_algos() == ["race", "merl", "matd3", "facmac", "ea"]
    assert paper_grid("paper-smax").available_algos() == ["race", "facmac", "ea"]


def test_paper_grid_points_and_budgets_per_task():
    g = paper_grid("paper-smax")
    spec = SweepSpec(
        tasks=list(g.presets),
        algos=["race", "facmac"],
        seeds=[1, 2, 3],
        total_steps=None,
        sets=[],
        task_configs={t: str(g.preset_path(t)) for t in g.presets},
    )
    assert len(spec.points()) == 3 * 2 * 3
    assert {t: spec.steps_for(t) for t in g.presets} == BUDGETS
    spec.validate()
    with pytest.raises(ConfigError, match="--total-steps is required"):
        SweepSpec(tasks=["smax/3m"], algos=["race"], seeds=[1], total_steps=None, sets=[]).validate()


def test_paper_grid_sweep_runs_at_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "grid"
    args = [
        "sweep",
        "--preset",
        "paper-mamujoco",
        "--tasks",
        "mamujoco/HalfCheetah-6x1",
        "--algos",
        "race,ea",
        "--seeds",
        "1",
        "--total-steps",
        "120",
        "--eval-episodes",
        "1",
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    index = json.loads((out / "index.json").read_text())
    assert [(r["algo"], r["status"]) for r in index["runs"]] == [("race", "finished"), ("ea", "finished")]
    saved = load_yaml(out / index["runs"][0]["run_dir"] / "config.yaml")
    assert saved["eval_interval"] == 10_000 and saved["race"]["vmm_beta"] == 10.0  # from the preset
    assert saved["learner"]["start_steps"] == 40  # --set still wins
    assert main(args) == 0  # restartable: a second call skips the finished runs
    assert capsys.readouterr().out.count("skip") == 2
    assert json.loads((out / "sweep.json").read_text())["folder_config"]["preset"] == "paper-mamujoco"
    assert main(args[:5] + ["--algos", "race"] + args[7:]) == 0  # the grid may change between restarts
    assert "skip     race" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--preset", "paper-atari"], "unknown preset 'paper-atari'; valid: paper-mamujoco, paper-smax"),
        (["--preset", "paper-smax", "--tasks", "smax/3m"], "not in --preset paper-smax"),
        (["--preset", "paper-smax", "--config", "configs/demo.yaml"], "drop --config"),
        ([], "needs --tasks and --total-steps"),
    ],
)
def test_bad_preset_arguments_exit_2(extra, match, tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "g"), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and not (tmp_path / "g").exists()


# ---------------------------------------------------------------- SMAX unit mixes


def test_unit_mix_syntax():
    assert parse_unit_mix("3s_vs_3z") == ([2, 2, 2], [3, 3, 3])  # stalkers vs zealots
    assert parse_unit_mix("2s3z") == ([2, 2, 3, 3, 3], [2, 2, 3, 3, 3])  # the same units on both sides
    assert parse_unit_mix("1M2m_vs_4zg1h") == ([1, 0, 0], [4, 4, 4, 4, 5])  # marauder, marines vs zerglings, hydralisk
    for bad in ("3x", "0m", "3s_vs_", "s3", "3s_vs_3z_vs_1m", ""):
        assert parse_unit_mix(bad) is None


@pytest.mark.parametrize("name", sorted(SMAX_UNBUILDABLE_PAPER_MAPS))
def test_paper_maps_smax_cannot_build_say_why(name):
    with pytest.raises(
        UnknownTaskError, match=f"SMAX has no {SMAX_UNBUILDABLE_PAPER_MAPS[name]} units; use smac/{name}"
    ):
        parse_task(f"smax/{name}")


def test_unit_mixes_build_the_right_units():
    pytest.importorskip("jaxmarl", reason="SMAX tasks need jaxmarl: pip install 'racemarl[smax]'")
    from racemarl.envs import make_env

    env = make_env("smax/3s_vs_3z")
    core = env._core
    assert env.spec.n_agents == 3 and core.n_enemies == 3 and env.spec.act_dims == (8,) * 3  # 5 moves + 3 targets
    assert core.env.scenario.tolist() == [2, 2, 2, 3, 3, 3]
    names = [core.env.unit_type_names[t] for t in core.env.scenario.tolist()]
    assert names == ["stalker"] * 3 + ["zealot"] * 3
    env2 = make_env("smax/1M2m_vs_4zg")
    assert [env2._core.env.unit_type_names[t] for t in env2._core.env.scenario.tolist()] == [
        "marauder",
        "marine",
        "marine",
    ] + ["zergling"] * 4
    obs, state, avail = env2.reset(seed=0)
    assert len(obs) == 3 and avail[0].shape == (5 + 4,)


def test_shipped_presets_resolve_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    from racemarl.config import PRESETS_DIR, resolve_preset, shipped_presets

    names = shipped_presets()
    assert "demo" in names and "paper/mamujoco-hopper-3x1" in names
    # every preset file is package data, so an installed racemarl has them (not only a clone)
    patterns = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["racemarl"]
    for f in PRESETS_DIR.rglob("*.yaml"):
        rel = f.relative_to(PRESETS_DIR.parent).as_posix()
        assert any(fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel
    monkeypatch.chdir(tmp_path)  # no configs/ here: names and the clone's paths still find the shipped files
    hopper = PRESETS_DIR / "paper" / "mamujoco-hopper-3x1.yaml"
    for given in (
        "paper/mamujoco-hopper-3x1",
        "paper/mamujoco-hopper-3x1.yaml",
        "configs/paper/mamujoco-hopper-3x1.yaml",
    ):
        assert resolve_preset(given) == hopper
        assert build_config(given).env.task == "mamujoco/Hopper-3x1"
    (tmp_path / "demo.yaml").write_text("seed: 7\n")  # a file that exists wins over a shipped name
    assert build_config("demo.yaml").seed == 7
    assert main(["config", "--config", "demo"]) == 0 and "task: smax/3m" in capsys.readouterr().out
    assert main(["config", "--config", "paper/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("racemarl: error: --config paper/nope does not exist; shipped presets: demo,")
        and "\n" not in err
    )


def test_sweep_takes_a_shipped_preset_by_name(tmp_path, monkeypatch, capsys):
    from racemarl.config import PRESETS_DIR

    monkeypatch.chdir(tmp_path)
    base = [
        "sweep",
        "--tasks",
        "mamujoco/HalfCheetah-6x1",
        "--algos",
        "ea",
        "--total-steps",
        "60",
        "--eval-episodes",
        "1",
        "--workers",
        "1",
    ]
    assert main(base + ["--config", "nope", "--out", "bad"]) == 2
    assert "--config nope does not exist; shipped presets:" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(base + ["--config", "halfcheetah-6x1", "--set", "race.pop_size=2", "--out", "ok"]) == 0
    assert json.loads((tmp_path / "ok" / "sweep.json").read_text())["folder_config"]["config"] == str(
        PRESETS_DIR / "halfcheetah-6x1.yaml"
    )
    index = json.loads((tmp_path / "ok" / "index.json").read_text())
    assert [r["status"] for r in index["runs"]] == ["finished"]
    assert load_yaml(tmp_path / "ok" / index["runs"][0]["run_dir"] / "config.yaml")["eval_interval"] == 10_000
