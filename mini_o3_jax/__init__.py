"""mini_o3_jax: the Mini-o3 visual-search agent (Qwen2.5-VL + zoom tool) in JAX/Flax.

Imports stay light here so that `mini-o3 --help` and host-side tools start fast; import the
subpackages (`mini_o3_jax.model`, `mini_o3_jax.processing`, ...) for the real work.
"""

__version__ = "0.1.0"
