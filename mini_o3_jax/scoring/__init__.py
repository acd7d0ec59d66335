"""Scoring answers, for RL rewards and eval alike (outside both loops, as Tunix keeps its reward functions).

`scorer.Scorer` is the one entry point: a rule scorer (`rules`: choice / exact / numeric, offline) or the
LLM judge (`judge`, configured by `judge_config`, worded by `judge_prompts`, reached through `judge_http`).
"""
