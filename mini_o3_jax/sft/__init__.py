"""Stage 1: cold-start supervised fine-tuning on multi-turn trajectories."""
