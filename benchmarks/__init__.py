"""Throughput and end-to-end timing scripts; each prints one JSON object (see benchmarks/README.md)."""
