"""vau: video anomaly understanding with video LLMs (VAU-Bench data, SFT and GRPO on Lightning + Hydra)."""

__version__ = "0.1.0"
