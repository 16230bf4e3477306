"""The tools around runs: evaluation, sweeps, the paper presets, plots, tables and statistics."""
