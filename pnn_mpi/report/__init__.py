"""What a run reports: the summary and ``metrics.json``, per-run plots, and the timeline."""
