"""What a run leaves on disk and reads back: run folders, checkpoints, metrics, trackers, the run's state."""
