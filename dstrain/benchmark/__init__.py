"""`benchmark`: size, inference latency/throughput and distillation-step throughput (see run.py)."""
