"""Measurements: throughput probes, resource telemetry, the device-busy window, held-out evaluation."""
