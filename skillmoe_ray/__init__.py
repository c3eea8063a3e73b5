"""skillmoe-ray: Skill-based mixture of pre-trained LLM experts (Symbolic-MoE) on Ray Serve."""

__version__ = "0.1.0"
