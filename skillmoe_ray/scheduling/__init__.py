"""Deciding: which worker runs which expert job, in what order, holding which models.

Pure functions over plain data (vLLM's split between the scheduler that
decides and the workers that do): the planner, the residency policy it shares
with the workers, and the makespan model the benchmarks check it against.
"""
