"""ddtrain: distributed data-parallel training for PyTorch, configured with Hydra."""

__version__ = "0.1.0"
