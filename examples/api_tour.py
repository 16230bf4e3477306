"""The Python API in one script: configure, train, extend the budget, evaluate, read the metrics.

python examples/api_tour.py runs/tour            # a short MATD3 run on HalfCheetah-6x1 (about 2 minutes)
python examples/api_tour.py runs/tour --tiny     # tiny networks and budget (seconds; what the tests run)
"""

from __future__ import annotations

import argparse
import sys

import racemarl

TINY = {
    "env.max_episode_steps": 20,
    "net.encoder_hidden": 16,
    "net.embed_dim": 8,
    "net.critic_hidden": [16, 16],
    "learner.batch_size": 16,
    "learner.start_steps": 40,
    "learner.buffer_size": 1000,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--tiny", action="store_true", help="tiny networks and budget")
    args = p.parse_args(argv)

    steps = 80 if args.tiny else 4000
    overrides = TINY if args.tiny else {"env.max_episode_steps": 200, "learner.start_steps": 1000}
    # 1. a config: keyword values and dotted overrides, validated at once
    cfg = racemarl.make_config(
        task="mamujoco/HalfCheetah-6x1",
        algo="matd3",
        seed=1,
        total_steps=steps,
        eval_interval=steps // 2,
        eval_episodes=2,
        overrides=overrides,
    )
    # 2. train a new run (a folder holding anything else is refused)
    first = racemarl.train_run(cfg, args.run_dir, progress=False)
    print(f"trained to {first['total_env_steps']} env steps: final eval return {first['final_eval_return']:.2f}")
    # 3. continue it with twice the budget: the same result as one run of 2 x steps
    second = racemarl.resume_run(args.run_dir, total_steps=2 * steps)
    print(f"resumed to {second['total_env_steps']} env steps: final eval return {second['final_eval_return']:.2f}")
    # 4. greedy episodes of the saved MARL team (also written to RUN_DIR/eval.json)
    result = racemarl.evaluate_run(args.run_dir, episodes=3)
    print(f"evaluation: mean {result['mean']:.2f} over {result['episodes']} episodes")
    # 5. the metrics, one dict per evaluation
    rows = racemarl.load_metrics(args.run_dir)
    print("env_steps  eval_return")
    for row in rows:
        print(f"{int(row['env_steps']):9d}  {row['eval_return']:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
