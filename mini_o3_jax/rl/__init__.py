"""Mini-o3's GRPO stage: the released RL prompt files and the RL loop (rewards come from `mini_o3_jax.scoring`)."""
