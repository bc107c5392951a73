"""The claims report and the study figures."""
