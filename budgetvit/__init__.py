"""budgetvit: train Vision Transformers from scratch on one GPU within a wall-clock budget."""
__version__ = "0.1.0"
