"""Batch-size science: the sweep runner, its memory probe, and the report and plot of a sweep's rows."""
