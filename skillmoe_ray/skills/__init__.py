"""Skill extraction (keyword LLM or embedding tagger) and alignment to profile skills."""
