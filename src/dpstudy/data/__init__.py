"""Data: download and prepare the datasets, and the standard and resident loaders that feed training."""
