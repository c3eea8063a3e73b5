"""Engines run models: every expert, keyword LLM and aggregator sits behind :class:`Engine`."""

from .base import Engine, GenerationRequest, SamplingSettings
from .registry import create_engine

__all__ = ["Engine", "GenerationRequest", "SamplingSettings", "create_engine"]
