"""Training: the engine and its steps, schedules, batching, parallel modes (DP/DDP), tasks, models, checkpoints."""
