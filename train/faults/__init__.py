"""Keeping ranks alive and agreeing: rank agreement (rank_sync), collective timeouts, preemption signals and
the non-finite step guard."""
