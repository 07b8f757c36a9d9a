"""rltrain: RL post-training of language models (DPO, PPO, GRPO, SPO)."""
__version__ = "0.1.0"
