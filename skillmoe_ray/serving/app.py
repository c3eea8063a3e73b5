"""The Ray Serve ingress: micro-batching, skills, routing, dispatch, HTTP API.

Requests are gathered into micro-batches by ``@serve.batch`` (window and size
from the config); each batch runs :meth:`Pipeline.solve` - the code
``skillmoe evaluate`` runs - with a :class:`RayExecutor` that plans expert
jobs over the worker actors, and an aggregator actor that merges the answers.
Up to ``max_concurrent_batches`` batches are in flight, so one batch's experts
can run while the previous one aggregates.
"""



import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections import Counter
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from ..config import load_config
from ..engines.base import SamplingSettings
from ..errors import SkillMoEError
from ..pipeline import ExpertAnswer, Pipeline, Solution
from ..runtime import Runtime
from ..strategies import VoteAggregator, log_odds_weights, make_router
from ..tasks import Question, Task, get_task
from .executor import RayExecutor, cost_model_for, start_aggregator, start_workers
from .schemas import ChatRequest, SolveRequest, SolveResponse, chat_response

log = logging.getLogger(__name__)

api = FastAPI(title="skillmoe-ray", description="Skill-based mixture of LLM experts", version="0.1.0")


class _Error(Exception):
    def __init__(self, status: int, message: str, headers: "dict[str, str] | None" = None):
        self.status = status
        self.message = message
        self.headers = headers


def _error(status: int, message: str, headers: "dict[str, str] | None" = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message}}, headers=headers)


def check_access(request: Request, api_key: "str | None") -> None:
    """Raises a 401 unless the bearer token matches (compared in constant time); /healthz is open."""
    if not api_key or request.url.path.endswith("/healthz"):
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise _Error(401, "missing or wrong API key (Authorization: Bearer <key>)", {"WWW-Authenticate": "Bearer"})


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The body as JSON, or a 4xx saying exactly what is wrong with it (raised as _Error)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise _Error(415, f"content type must be application/json, got {ctype or 'none'!r}")
    body = await request.body()
    if len(body) > max_bytes:
        raise _Error(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Error(400, "request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _Error(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def validate(model: Any, data: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise _Error(422, detail) from None


def read_api_key(env_name: str, file: "str | None") -> "str | None":
    """The API key from a file (first line) or an environment variable; never logged."""
    if file:
        from pathlib import Path

        try:
            key = Path(file).expanduser().read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise SkillMoEError(f"{file}: serving.api_key_file cannot be read or is empty") from None
        return key or None
    return os.environ.get(env_name) or None


class RemoteAggregator:
    """The pipeline's aggregation stage, run by the dedicated aggregator actor.

    If the actor fails, the experts' answers are still good: the batch falls
    back to a majority vote, and each answer says so in ``aggregator``.
    """

    def __init__(self, actor: Any, name: str, fallback: VoteAggregator, timeout_s: float = 600.0):
        self.actor = actor
        self.name = name
        self.fallback = fallback
        self.timeout_s = timeout_s

    def aggregate(self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                  executor: Any, seed: int) -> "list[tuple[str | None, str, str]]":
        import ray

        try:
            return ray.get(self.actor.aggregate.remote(task.name, list(questions), [list(a) for a in answers], seed),
                           timeout=self.timeout_s)
        except Exception as exc:  # actor died, timed out or raised
            log.warning("aggregator failed (%s); falling back to a vote of the experts", type(exc).__name__)
            voted = self.fallback.aggregate(task, questions, answers, executor, seed)
            return [(a, r, f"vote (fallback: aggregator {self.name} failed)") for a, r, _ in voted]


def solution_dict(s: Solution) -> dict[str, Any]:
    return {
        "answer": s.answer,
        "response": s.response,
        "skills": s.skills,
        "experts": s.experts,
        "expert_answers": [{"expert": a.expert, "answer": a.pred} for a in s.answers],
        "aggregator": s.aggregator,
        "task": s.question.task,
        "timings": {k: round(v, 6) for k, v in s.timings.items()},
    }


def user_error(exc: BaseException) -> "SkillMoEError | None":
    """The project error behind an exception, unwrapping Ray's task errors; None for a bug."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, SkillMoEError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__  # RayTaskError keeps the remote exception in .cause
        seen += 1
    return None


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(api)
class SkillMoEIngress:
    def __init__(self, config: str, recorded_dir: str | None = None, state_dir: str | None = None):
        cfg = load_config(config)
        if state_dir:
            cfg.state_dir = state_dir
        self.cfg = cfg
        rt = Runtime.from_config(cfg, recorded_dir=recorded_dir, progress=False)
        sv = cfg.serving
        data_dir = str(cfg.benchmarks_dir()) if cfg.benchmarks_dir() else None
        workers, self._pg = start_workers(rt.experts, sv.workers, sv.gpus_per_worker, sv.cpus_per_worker, data_dir,
                                          sv.models_per_worker, host_budget_gb=sv.host_budget_gb,
                                          prefetch=sv.prefetch)
        self.workers = workers
        rt.executor = RayExecutor(workers, cost_model_for(rt.experts), sv.models_per_worker, rt.expert_names)
        self.rt = rt
        self.tasks = [get_task(t) for t in sv.tasks]
        self.profiles = {t.name: rt.profiles(t) for t in self.tasks}
        self.skill_stages = {t.name: rt.skill_stage(p) for t, p in zip(self.tasks, self.profiles.values())}
        self.routers = {name: make_router(cfg.routing, p) for name, p in self.profiles.items()}
        agg_cfg = cfg.aggregation
        llm_expert = None
        if agg_cfg.mode == "llm":
            agg_name = agg_cfg.aggregator or self.profiles[self.tasks[0].name].aggregator.get("name")
            llm_expert = next(e for e in rt.experts if e.name == agg_name)
        self.aggregator = start_aggregator(
            agg_cfg.mode,
            {n: p.ranking() for n, p in self.profiles.items()},
            {n: log_odds_weights(p.accuracy) for n, p in self.profiles.items()},
            llm_expert, data_dir, sv.aggregator_gpus, agg_cfg.max_tokens,
        )
        self.agg_name = llm_expert.name if llm_expert else agg_cfg.mode
        self.sampling = SamplingSettings(cfg.generation.temperature, cfg.generation.max_tokens)
        self.usage: Counter[str] = Counter()
        self.served = 0
        self.api_key = read_api_key(sv.api_key_env, sv.api_key_file)
        self.max_body = 4 * sv.max_question_chars + 4096
        self.pending = 0
        self._batch.set_max_batch_size(sv.max_batch_size)
        self._batch.set_batch_wait_timeout_s(sv.batch_window_s)
        self._index = 0

    # ------------------------------------------------------------------ batching

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.05, max_concurrent_batches=2)
    async def _batch(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._solve_sync, items)

    def _solve_sync(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        t_batch = time.perf_counter()
        out: list[dict[str, Any] | None] = [None] * len(items)
        by_task: dict[str, list[int]] = {}
        for i, (task, _) in enumerate(items):
            by_task.setdefault(task, []).append(i)
        for task_name, idx in by_task.items():
            task = get_task(task_name)
            questions = []
            for i in idx:
                self._index += 1
                questions.append(Question(task.name, "request", self._index, items[i][1]))
            fallback = VoteAggregator(self.profiles[task.name].ranking())
            pipe = Pipeline(task, self.skill_stages[task.name], self.routers[task.name],
                            RemoteAggregator(self.aggregator, self.agg_name, fallback), self.rt.executor, self.sampling)
            try:
                solved: list = pipe.solve(questions, seed=self.cfg.routing.seed)
            except Exception:
                # one bad question must not fail its whole batch: isolate it by solving one at a time
                solved = []
                for q in questions:
                    try:
                        solved.append(pipe.solve([q], seed=self.cfg.routing.seed)[0])
                    except Exception as exc:
                        solved.append(exc)
            for i, s in zip(idx, solved):
                if isinstance(s, Exception):
                    out[i] = {"__error__": s}
                    continue
                d = solution_dict(s)
                d["timings"]["batch_size"] = float(len(items))
                out[i] = d
                self.usage.update(s.experts)
        self.served += len(items)
        log.debug("batch of %d in %.3fs", len(items), time.perf_counter() - t_batch)
        return out  # type: ignore[return-value]

    def _task_for(self, name: "str | None") -> str:
        if name is None:
            return self.tasks[0].name
        try:
            task = get_task(name)
        except SkillMoEError as exc:
            raise _Error(400, str(exc)) from None
        if task.name not in self.profiles:
            raise _Error(400, f"task {task.name!r} is not served here (serving: {', '.join(self.profiles)})")
        return task.name

    async def _solve(self, question: str, task: str | None) -> dict[str, Any]:
        if len(question) > self.cfg.serving.max_question_chars:
            raise _Error(413, f"question is {len(question)} characters; the limit is {self.cfg.serving.max_question_chars}")
        t0 = time.perf_counter()
        task_name = self._task_for(task)
        sv = self.cfg.serving
        if self.pending >= sv.max_pending:
            raise _Error(503, f"server is at capacity ({sv.max_pending} requests pending); retry shortly",
                         {"Retry-After": "1"})
        self.pending += 1
        try:
            result = await asyncio.wait_for(self._batch((task_name, question)), timeout=sv.request_timeout_s)
            if "__error__" in result:
                raise result["__error__"]
        except asyncio.TimeoutError:
            raise _Error(504, f"no answer within {sv.request_timeout_s:g} s (task {task_name}, "
                              f"{time.perf_counter() - t0:.1f} s in the system); it may still complete") from None
        except Exception as exc:
            err = user_error(exc)
            if err is None:
                log.exception("request failed")
                raise _Error(500, f"internal error ({type(exc).__name__}); see the server log") from None
            raise _Error(422, str(err)) from None
        finally:
            self.pending -= 1
        result["timings"]["request"] = round(time.perf_counter() - t0, 6)
        return result

    # ------------------------------------------------------------------ HTTP

    @api.post("/v1/solve", response_model=SolveResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": SolveRequest.model_json_schema()}}}})
    async def solve(self, request: Request):
        try:
            body = await self._body(request, SolveRequest)
            return await self._solve(body.question, body.task)
        except _Error as e:
            return _error(e.status, e.message, e.headers)

    @api.post("/v1/chat/completions",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": ChatRequest.model_json_schema()}}}})
    async def chat(self, request: Request):
        try:
            body = await self._body(request, ChatRequest)
            if body.stream:
                raise _Error(400, "stream=true is not supported")
            users = [m.content for m in body.messages if m.role == "user"]
            if not users or not users[-1].strip():
                raise _Error(422, "messages need a non-empty user message")
            solved = await self._solve(users[-1], body.task)
        except _Error as e:
            return _error(e.status, e.message, e.headers)
        return chat_response(body.model, solved, int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}")

    async def _body(self, request: Request, model: Any) -> Any:
        """Access first, then the body's shape: a bad request costs no batch slot."""
        check_access(request, self.api_key)
        return validate(model, await read_json_body(request, self.max_body))

    @api.get("/v1/pool")
    async def pool(self, request: Request):
        try:
            check_access(request, self.api_key)
        except _Error as e:
            return _error(e.status, e.message, e.headers)
        infos = await asyncio.gather(*[w.info.remote() for w in self.workers])
        try:
            agg = await asyncio.wait_for(self.aggregator.info.remote(), timeout=10)
        except Exception as exc:  # dead or unreachable: say so, the pool view must still answer
            agg = {"mode": self.cfg.aggregation.mode, "status": f"unavailable ({type(exc).__name__}); "
                                                                "answers fall back to a vote"}
        resident = {e: [i["wid"] for i in infos if e in i["resident"]] for e in self.rt.expert_names}
        return {
            "experts": [
                {"name": e.name, "engine": e.engine, "model": e.model, "resident_on_workers": resident[e.name],
                 "usage": self.usage.get(e.name, 0),
                 "healthy": e.name not in self.rt.executor.unhealthy,
                 "unhealthy_reason": self.rt.executor.unhealthy.get(e.name)}
                for e in self.rt.experts
            ],
            "workers": infos,
            "aggregator": agg,
            "tasks": list(self.profiles),
            "routing": self.cfg.routing.strategy,
            "served": self.served,
        }

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}


def resolve_config_path(value: str) -> str:
    """A deployment file given relative to the working directory or to the project root."""
    from pathlib import Path

    p = Path(value).expanduser()
    if p.is_absolute() or p.is_file():
        return str(p.resolve())
    root = Path(__file__).resolve().parents[2]
    return str((root / p).resolve()) if (root / p).is_file() else str(p)


def build_app(args: dict[str, str]) -> Any:
    """Application builder for ``serve run skillmoe_ray.serving.app:build_app config=deployments/x.yaml``
    and for the Serve config files under ``deployments/``."""
    if "config" not in args:
        raise SkillMoEError("build_app needs the argument config=<deployment yaml>")
    cfg_path = resolve_config_path(args["config"])
    cfg = load_config(cfg_path)  # fail here, with the file and field, rather than inside a replica
    return ingress_for(cfg).bind(cfg_path, args.get("recorded_dir"), args.get("state_dir"))


def ingress_for(cfg: Any) -> Any:
    """The ingress deployment sized for a config: Serve must admit more than the pending cap and a batch."""
    limit = max(cfg.serving.max_pending, cfg.serving.max_batch_size) + 16
    return SkillMoEIngress.options(max_ongoing_requests=limit)
