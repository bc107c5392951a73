"""MLflow: experiments, runs, metrics and artifacts of every stage."""
