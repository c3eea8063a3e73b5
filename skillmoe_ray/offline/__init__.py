"""Offline runs: evaluation over a test split and recording a pool's answers."""
