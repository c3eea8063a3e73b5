"""Writes skillmoe_ray/data/vllm_models.json from a vLLM wheel: the architectures it serves and the model
types it has configs of its own for (so `skillmoe check` knows without vLLM installed, or with the CPU
build installed, what the pinned GPU build supports).

    pip download --no-deps vllm==0.33.0 -d ~/.cache/skillmoe/wheels
    python scripts/vllm_registry.py ~/.cache/skillmoe/wheels/vllm-0.33.0-*.whl
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "skillmoe_ray" / "data" / "vllm_models.json"
#: registry dicts of models that generate text (what an expert or aggregator needs)
GENERATIVE = ("_TEXT_GENERATION_MODELS", "_TRANSFORMERS_SUPPORTED_MODELS", "_TRANSFORMERS_BACKEND_MODELS")


def dict_keys(tree: ast.Module, name: str) -> list[str]:
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            value = node.value
            if isinstance(value, ast.Dict):
                return [k.value for k in value.keys if isinstance(k, ast.Constant)]
            if isinstance(value, ast.Call):  # LazyConfigDict(a="A", **{"b-c": "B"})
                keys = [kw.arg for kw in value.keywords if kw.arg]
                for kw in value.keywords:
                    if kw.arg is None and isinstance(kw.value, ast.Dict):
                        keys += [k.value for k in kw.value.keys if isinstance(k, ast.Constant)]
                return keys
    raise SystemExit(f"{name} not found")


def main(wheel: str) -> None:
    version = re.search(r"vllm(?:_cpu)?-([\d.]+)-", Path(wheel).name).group(1)
    with zipfile.ZipFile(wheel) as z:
        registry = ast.parse(z.read("vllm/model_executor/models/registry.py"))
        configs = ast.parse(z.read("vllm/transformers_utils/config.py"))
    architectures = sorted({a for name in GENERATIVE for a in dict_keys(registry, name)})
    data = {"vllm": version, "source": Path(wheel).name, "architectures": architectures,
            "config_model_types": sorted(dict_keys(configs, "_CONFIG_REGISTRY"))}
    OUT.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(architectures)} architectures, {len(data['config_model_types'])} config types (vLLM {version})")


if __name__ == "__main__":
    main(sys.argv[1])
