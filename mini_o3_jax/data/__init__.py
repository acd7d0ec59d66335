"""Benchmarks and training sets in their published formats, TFDS builders over them, synthetic data."""
