"""What the training loop (vtreid.train) leans on: configuration, data, checkpoints, evaluation,
progress and writers. Each module is small and knows nothing of the methods."""
