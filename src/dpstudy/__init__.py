"""dpstudy: data-parallel CNN training studies, reproducible with DVC, logged to MLflow."""

__version__ = "0.1.0"
