"""LightningModules (SFT, GRPO) and the backbone registry."""
