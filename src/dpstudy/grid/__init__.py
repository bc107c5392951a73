"""A stage's grid of configurations: building and running it, the CPU worker pool, adaptive schedules."""
