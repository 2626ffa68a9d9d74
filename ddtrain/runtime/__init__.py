"""One training run: the step, the loop and its parts (evaluation, throughput, checkpoints, metrics, noise scale)."""
