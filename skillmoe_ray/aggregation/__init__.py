"""Aggregation: merging the experts' answers (votes, the aggregator classes, choosing an aggregator)."""
