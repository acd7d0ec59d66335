"""The experiment configs, shipped with the package as `mini_o3_jax.configs` (setup.py `package_dir`).

Each module defines `get_config()`; load one with `mini_o3_jax.config_files.load_config("rl_grpo")` or
`mini-o3 <cmd> --config configs/rl_grpo.py`, which finds these from any directory.
"""
