"""racemarl: RACE (ICML 2023), evolutionary algorithms + multi-agent RL with shared encoders."""

__version__ = "0.1.0"
