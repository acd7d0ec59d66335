"""Training: batches, losses, optimizer, train step, checkpoints, metrics."""
