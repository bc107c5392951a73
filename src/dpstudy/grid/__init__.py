"""A stage's grid of configurations, one concern per module: `build` (the grid of `RunSpec`s from
params, refused before any work if it cannot run), `sweep` (running it), `configuration` (one
configuration in its MLflow run), `twins` (configurations whose training is another's), `cpupool`
(several at once on the CPU), `tables` and `headline` (runs.csv, epochs.csv, metrics.json and the
parent run's figures), `printout` (the lines and closing table a person reads), `means`, and
`adaptive` (study C's schedules and time-to-target)."""
