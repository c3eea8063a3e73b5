"""Config in, Serve application out (Ray Serve LLM's builder-function convention).

The deploying process reads the deployment file once, loads the profiles (or
builds them here, never inside a replica) and ships both to the deployments as
arguments, so every replica starts from the same validated config and profiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import ConfigError, SkillMoEError
from .app_spec import AppSpec

#: the resource Ray puts on the head node only
HEAD_NODE_RESOURCE = "node:__internal_head__"


def resolve_config_path(value: str) -> str:
    """A deployment file given relative to the working directory or to the project root."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.is_file():
        return str(p.resolve())
    root = Path(__file__).resolve().parents[2]
    return str((root / p).resolve()) if (root / p).is_file() else str(p)


def _ray_up() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False


def app_spec(cfg: Config, recorded_dir: str | None = None, progress: bool = False,
             build_profiles: bool = False, cluster_check: bool = False) -> AppSpec:
    """The profiles of every served task, loaded here once and shipped with the application.

    Missing or stale profiles are an error naming the command that builds them (``skillmoe profile``):
    a deployment never builds them on its own, since on a real pool that means every model answering
    the whole validation split. ``build_profiles`` builds them in this process instead, as
    ``skillmoe serve`` does for a local run.
    """
    from ..pool import pool_experts
    from ..preflight import preflight, ray_nodes
    from ..runtime import Runtime

    # the checks of `skillmoe check`, before anything is built; the cluster's resources only where this
    # process runs in the cluster it deploys to (an autoscaling cluster grows its nodes later)
    nodes = ray_nodes() if cluster_check and _ray_up() else None
    preflight(cfg, pool_experts(cfg, recorded_dir), nodes=nodes).raise_for_errors()
    rt = Runtime.from_config(cfg, recorded_dir=recorded_dir, progress=progress)
    profiles = {}
    for name in cfg.serving.tasks:
        task = rt.task(name)
        prof = rt.profiles(task) if build_profiles else rt.saved_profiles(task)
        if prof is None:
            where = cfg.source or f"<the {cfg.name} deployment file>"
            raise ConfigError(f"{where}: no profiles of task {task.name} for this pool (looked for "
                              f"{rt.profiles_path(task)}); build them first with: "
                              f"skillmoe profile --config {where} --task {task.name}")
        profiles[task.name] = prof.to_json()
    return AppSpec(cfg, profiles, recorded_dir)


def build_application(cfg: Config, recorded_dir: str | None = None, progress: bool = False,
                      build_profiles: bool = True, cluster_check: bool = False) -> Any:
    """The bound application: a one-replica scheduler that owns the pool, and N stateless ingress replicas."""
    from .ingress import SkillMoEIngress
    from .scheduler_deployment import SkillMoEScheduler

    spec = app_spec(cfg, recorded_dir, progress, build_profiles, cluster_check)
    placement: dict[str, Any] = {"num_cpus": 0}
    if cfg.serving.control_on_head:  # Ray gives the head node this resource (1 of it); a sliver pins there
        placement["resources"] = {HEAD_NODE_RESOURCE: 0.001}
    scheduler = SkillMoEScheduler.options(
        max_ongoing_requests=max(10_000, 4 * cfg.serving.max_pending), ray_actor_options=placement).bind(spec)
    limit = max(cfg.serving.max_pending, cfg.serving.max_batch_size) + 16
    ingress = SkillMoEIngress.options(max_ongoing_requests=limit, num_replicas=cfg.serving.ingress_replicas,
                                      ray_actor_options=placement)
    return ingress.bind(scheduler, spec)


def build_app(args: dict[str, str]) -> Any:
    """Application builder for ``serve run skillmoe_ray.serving.builders:build_app config=deployments/x.yaml``
    and for the Serve config files under ``deployments/``."""
    if "config" not in args:
        raise SkillMoEError("build_app needs the argument config=<deployment yaml>")
    cfg = load_config(resolve_config_path(args["config"]))  # fail here, with the file and field
    if args.get("state_dir"):
        cfg.state_dir = args["state_dir"]
    # `serve run` / `serve deploy` (and KubeRay) never build profiles: `skillmoe profile` does, beforehand
    build = str(args.get("build_profiles", "false")).lower() in ("1", "true", "yes")
    return build_application(cfg, args.get("recorded_dir"), build_profiles=build)
