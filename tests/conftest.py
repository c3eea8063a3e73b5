"""Shared fixtures. The recorded pool and the packaged MiniLM are real; nothing here fakes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDED_CONFIG = ROOT / "deployments" / "recorded-mmlu-pro.yaml"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    """Profiles built once per test session, outside the working tree."""
    return tmp_path_factory.mktemp("skillmoe-state")


@pytest.fixture(scope="session")
def recorded_cfg(state_dir):
    from skillmoe_ray.config import load_config

    cfg = load_config(RECORDED_CONFIG)
    cfg.state_dir = str(state_dir)
    return cfg


@pytest.fixture(scope="session")
def recorded_runtime(recorded_cfg):
    from skillmoe_ray.runtime import Runtime

    return Runtime.from_config(recorded_cfg, progress=False)


@pytest.fixture(scope="session")
def mmlu_profiles(recorded_runtime):
    from skillmoe_ray.tasks import get_task

    return recorded_runtime.profiles(get_task("MMLU_Pro"))
