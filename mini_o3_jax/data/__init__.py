"""Benchmarks and training sets in their published formats, TFDS builders over them (the synthetic
sets are written by `mini_o3_jax.toy.writers`)."""
