"""Benchmarks and models of speed: throughput against a hand-written loop, allreduce, overlap, the scaling predictor."""
