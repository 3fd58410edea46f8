"""The distillation / pretraining trainer: `run.py` (commands), `step.py` (one micro-step), `throughput.py` (benchmark)."""
