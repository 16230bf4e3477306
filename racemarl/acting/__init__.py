"""The acting: rollouts of several teams in lockstep, the rollout workers, and one object per task family."""
