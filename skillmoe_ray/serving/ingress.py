"""Stateless ingress replicas: HTTP, validation, skills and recruitment, then the scheduler.

A replica holds no model and no pool state: it runs the pipeline's first
stages (the same functions ``skillmoe evaluate`` runs) on micro-batches of its
own requests, so Sentence-BERT embeds a burst at once, and hands each routed
question to the one scheduler. Any number of them can run (``num_replicas`` or
``autoscaling_config`` in the Serve config); losing one loses only the requests
it was holding.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Sequence

from fastapi import FastAPI, Request
from ray import serve

from ..aggregators import Aggregator
from ..engines.base import SamplingSettings
from ..errors import EngineError, SkillMoEError
from ..execution import ExpertPlan
from ..pipeline import Pipeline, expert_requests
from ..solution import ExpertAnswer
from ..profiles import Profiles
from ..runtime import Runtime
from ..routers import make_router
from ..tasks import Question, Task, get_task
from .builders import AppSpec
from .http import HTTPError, check_access, error_response, read_api_key, read_json_body, user_error, validate
from .scheduler import Overloaded, Work
from .schemas import ChatRequest, SolveRequest, SolveResponse, chat_response

log = logging.getLogger(__name__)

api = FastAPI(title="skillmoe-ray", description="Skill-based mixture of LLM experts", version="0.1.0")


class SchedulerExecutor:
    """The executor protocol over the scheduler deployment, for model work an ingress starts itself
    (the keyword LLM, a cascade router's rounds). Called from worker threads, never the event loop."""

    def __init__(self, handle: Any, expert_names: Sequence[str]):
        self.handle = handle
        self.expert_names = list(expert_names)
        self._unhealthy: dict[str, str] = {}
        self._checked = 0.0

    @property
    def unhealthy(self) -> dict[str, str]:
        if time.monotonic() - self._checked > 1.0:
            self._unhealthy = self.handle.unhealthy.remote().result()
            self._checked = time.monotonic()
        return self._unhealthy

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]:
        texts = self.handle.run_plan.remote(plan, sampling).result()
        self._checked = 0.0  # a load may have failed: look again next time
        return texts

    def engine(self, name: str) -> Any:
        raise EngineError("models live on the worker actors; there is no local engine in a served deployment")


class SchedulerAggregator(Aggregator):
    """A cascade's aggregation stage: the scheduler's aggregator actor for the task."""

    def __init__(self, handle: Any, name: str):
        self.handle = handle
        self.name = name

    def aggregate(self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                  executor: Any, seed: int) -> list[tuple[str | None, str, str]]:
        return self.handle.aggregate.remote(task.name, list(questions), [list(a) for a in answers], seed).result()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(api)
class SkillMoEIngress:
    def __init__(self, scheduler: Any, spec: AppSpec):
        cfg = spec.cfg
        self.cfg = cfg
        self.scheduler = scheduler
        rt = Runtime.from_config(cfg, recorded_dir=spec.recorded_dir, progress=False)
        rt.executor = SchedulerExecutor(scheduler, rt.expert_names)  # the keyword LLM runs on the pool
        self.rt = rt
        self.profiles = {t: Profiles.from_json(p) for t, p in spec.profiles.items()}
        self.tasks = [get_task(t) for t in cfg.serving.tasks]
        self.pipelines = {
            t.name: Pipeline(t, rt.skill_stage(self.profiles[t.name]), make_router(cfg.routing, self.profiles[t.name]),
                             SchedulerAggregator(scheduler, cfg.aggregation.mode), rt.executor,
                             SamplingSettings(cfg.generation.temperature, cfg.generation.max_tokens))
            for t in self.tasks}
        sv = cfg.serving
        self.api_key = read_api_key(sv.api_key_env, sv.api_key_file)
        self.max_body = 4 * sv.max_question_chars + 4096
        self._prepare.set_max_batch_size(sv.max_batch_size)
        self._prepare.set_batch_wait_timeout_s(sv.batch_window_s)
        self._index = 0

    # ------------------------------------------------------------------ skills and recruitment

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.05, max_concurrent_batches=2)
    async def _prepare(self, items: list[tuple[str, str]]) -> list[Any]:
        return await asyncio.to_thread(self._prepare_sync, items)

    def _prepare_sync(self, items: list[tuple[str, str]]) -> list[Any]:
        """Skills and experts for a micro-batch of this replica's requests; an error stays with its request."""
        out: list[Any] = [None] * len(items)
        by_task: dict[str, list[int]] = {}
        for i, (task, _) in enumerate(items):
            by_task.setdefault(task, []).append(i)
        seed = self.cfg.routing.seed
        for task_name, idx in by_task.items():
            pipe = self.pipelines[task_name]
            questions = []
            for i in idx:
                self._index += 1
                questions.append(Question(task_name, "request", self._index, items[i][1]))
            t0 = time.perf_counter()
            try:
                skills = pipe.skill_stage.skills(questions) if pipe.skill_stage else [[] for _ in questions]
                t1 = time.perf_counter()
                selections = pipe.router.route(questions, skills, seed)
            except Exception as exc:  # noqa: BLE001 - reported per request
                for i in idx:
                    out[i] = exc
                continue
            t2 = time.perf_counter()
            requests = expert_requests(pipe.task, questions, skills)
            ranking = list(pipe.router.ranking or []) + [e for e in self.rt.expert_names
                                                           if e not in (pipe.router.ranking or [])]
            for i, q, sk, sel, req in zip(idx, questions, skills, selections, requests):
                out[i] = (Work(q, list(sel), req, pipe.sampling_for(seed), seed, ranking), list(sk),
                          {"skills": t1 - t0, "route": t2 - t1})
        return out

    async def _solve(self, question: str, task: str | None) -> dict[str, Any]:
        sv = self.cfg.serving
        if len(question) > sv.max_question_chars:
            raise HTTPError(413, f"question is {len(question)} characters; the limit is {sv.max_question_chars}")
        t0 = time.perf_counter()
        task_name = self._task_for(task)
        try:
            result = await asyncio.wait_for(self._answer(task_name, question), timeout=sv.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(504, f"no answer within {sv.request_timeout_s:g} s (task {task_name}, "
                                 f"{time.perf_counter() - t0:.1f} s in the system); it may still complete") from None
        except HTTPError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status here, once
            err = user_error(exc)
            if isinstance(err, Overloaded):
                raise HTTPError(503, str(err), {"Retry-After": "1"}) from None
            if err is None:
                log.exception("request failed")
                raise HTTPError(500, f"internal error ({type(exc).__name__}); see the server log") from None
            raise HTTPError(422, str(err)) from None
        result["timings"]["request"] = round(time.perf_counter() - t0, 6)
        return result

    async def _answer(self, task_name: str, question: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        prepared = await self._prepare((task_name, question))
        if isinstance(prepared, BaseException):
            raise prepared
        work, skills, timings = prepared
        pipe = self.pipelines[task_name]
        if pipe.router.cascade:  # rounds: each asks the scheduler, the pipeline decides when to stop
            solved = await asyncio.to_thread(pipe.solve, [work.question], work.seed, [skills])
            s = solved[0]
            result = {"answer": s.answer, "response": s.response, "experts": s.experts,
                      "expert_answers": [{"expert": a.expert, "answer": a.pred} for a in s.answers],
                      "aggregator": s.aggregator, "task": task_name,
                      "timings": {"experts": s.timings["experts"], "aggregate": s.timings["aggregate"]}}
        else:
            result = await self.scheduler.solve.remote(work)
        result["skills"] = skills
        timings = {**timings, **result["timings"], "total": time.perf_counter() - t0}
        result["timings"] = {k: round(v, 6) for k, v in timings.items()}
        return result

    def _task_for(self, name: str | None) -> str:
        if name is None:
            return self.tasks[0].name
        try:
            task = get_task(name)
        except SkillMoEError as exc:
            raise HTTPError(400, str(exc)) from None
        if task.name not in self.pipelines:
            raise HTTPError(400, f"task {task.name!r} is not served here (serving: {', '.join(self.pipelines)})")
        return task.name

    # ------------------------------------------------------------------ HTTP

    @api.post("/v1/solve", response_model=SolveResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": SolveRequest.model_json_schema()}}}})
    async def solve(self, request: Request):
        try:
            body = await self._body(request, SolveRequest)
            return await self._solve(body.question, body.task)
        except HTTPError as e:
            return error_response(e.status, e.message, e.headers)

    @api.post("/v1/chat/completions",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": ChatRequest.model_json_schema()}}}})
    async def chat(self, request: Request):
        try:
            body = await self._body(request, ChatRequest)
            if body.stream:
                raise HTTPError(400, "stream=true is not supported")
            users = [m.content for m in body.messages if m.role == "user"]
            if not users or not users[-1].strip():
                raise HTTPError(422, "messages need a non-empty user message")
            solved = await self._solve(users[-1], body.task)
        except HTTPError as e:
            return error_response(e.status, e.message, e.headers)
        return chat_response(body.model, solved, int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}")

    async def _body(self, request: Request, model: Any) -> Any:
        """Access first, then the body's shape: a bad request costs no batch slot."""
        check_access(request, self.api_key)
        return validate(model, await read_json_body(request, self.max_body))

    @api.get("/v1/pool")
    async def pool(self, request: Request):
        try:
            check_access(request, self.api_key)
        except HTTPError as e:
            return error_response(e.status, e.message, e.headers)
        state = await self.scheduler.pool.remote()
        infos = [w for w in state["workers"] if "resident" in w]
        resident = {e: [i["wid"] for i in infos if e in i["resident"]] for e in self.rt.expert_names}
        return {
            "experts": [
                {"name": e.name, "engine": e.engine, "model": e.model, "resident_on_workers": resident[e.name],
                 "usage": state["usage"].get(e.name, 0),
                 "healthy": e.name not in state["unhealthy"],
                 "unhealthy_reason": state["unhealthy"].get(e.name)}
                for e in self.rt.experts
            ],
            "workers": state["workers"],
            "aggregators": state["aggregators"],
            "tasks": list(self.pipelines),
            "routing": self.cfg.routing.strategy,
            "served": state["served"],
            "batches": state["batches"],
            "pending": state["pending"],
        }

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}
