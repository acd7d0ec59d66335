"""`mini-o3 eval`: Avg@K over benchmarks, turn-limit curves, paper-style reports."""
