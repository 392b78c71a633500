"""genlab: config-driven training and honest comparison of deep generative models."""

__version__ = "0.1.0"
