"""Reinforcement-learning pieces that run on the host: answer extraction and rewards (LLM judge, rule scorers)."""
