"""Rollout on device: the KV cache, jitted prefill/extend/decode with sampling, and the host engine."""
