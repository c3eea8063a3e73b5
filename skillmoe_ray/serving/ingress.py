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
import itertools
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from ..aggregation.aggregators import Aggregator
from ..engines.base import SamplingSettings
from ..errors import SkillMoEError
from ..execution import ExpertPlan
from ..pipeline import Pipeline, expert_requests
from ..solution import ExpertAnswer
from ..profiles import Profiles
from ..runtime import Runtime
from ..routing.routers import make_router
from ..tasks.catalogue import Question, Task
from .app_spec import AppSpec
from . import http, metrics
from .http import HTTPError, check_access, from_error, read_api_key, read_json_body, user_error, validate
from .scheduler import Overloaded, Unavailable, Work
from .messages import AnswerRecord, ExpertPick, TokenCount
from .schemas import ChatRequest, SolveRequest, SolveResponse, chat_chunk, chat_response, skillmoe_extra

log = logging.getLogger(__name__)

api = FastAPI(title="skillmoe-ray", description="Skill-based mixture of LLM experts", version="0.1.0")
http.install(api)

#: the model id of the whole pool; each expert's name is a model id too
POOL_MODEL = "skillmoe"
STREAM_KEEPALIVE_S = 2.0
STREAM_PIECE_CHARS = 64
#: what a streamed answer says where the aggregator stopped part-way and the fallback vote's answer follows
FALLBACK_NOTE = "\n\n[the aggregator stopped part-way; answered instead by {who}]\n\n"
HEALTH_TIMEOUT_S = 5.0


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
        texts, usage = self.handle.run_plan.remote(plan, sampling, True).result()
        UsageMeter.record(usage)
        self._checked = 0.0  # a load may have failed: look again next time
        return texts


class SchedulerAggregator(Aggregator):
    """A cascade's aggregation stage: the scheduler's aggregator actor for the task."""

    def __init__(self, handle: Any, name: str):
        self.handle = handle
        self.name = name

    def aggregate(self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                  executor: Any, seed: int) -> list[tuple[str | None, str, str]]:
        return self.handle.aggregate.remote(task.name, list(questions), [list(a) for a in answers], seed).result()


@dataclass
class Ask:
    """One request as the ingress handles it: the question, its task, and what the client chose."""

    question: str
    task: str
    #: one expert by name (``model: <expert>``): that expert alone answers, no recruitment, no aggregator
    expert: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int = 0
    request_id: str = ""
    #: how far it got (streamed to clients as keep-alive comments)
    stage: str = "queued"

    def sampling(self, base: SamplingSettings) -> SamplingSettings:
        return SamplingSettings(
            temperature=base.temperature if self.temperature is None else self.temperature,
            max_tokens=base.max_tokens if self.max_tokens is None else self.max_tokens,
            top_p=base.top_p if self.top_p is None else self.top_p,
            seed=base.seed)


class UsageMeter:
    """Tokens of the model calls one thread makes through the scheduler (the keyword LLM, cascade rounds)."""

    _local = threading.local()

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0

    @classmethod
    def start(cls) -> "UsageMeter":
        meter = cls()
        cls._local.meter = meter
        return meter

    @classmethod
    def record(cls, usage: dict[str, int] | None) -> None:
        meter = getattr(cls._local, "meter", None)
        if meter is not None and usage:
            meter.prompt += usage.get("prompt_tokens", 0)
            meter.completion += usage.get("completion_tokens", 0)

    def share(self, n: int) -> dict[str, int]:
        """An equal share for each of ``n`` questions."""
        if n <= 0 or not (self.prompt or self.completion):
            return {}
        return {"prompt_tokens": round(self.prompt / n), "completion_tokens": round(self.completion / n)}


def stage_text(event: dict[str, Any]) -> str:
    """A scheduler stage event as a stream's comment line says it: ``experts 2/3``, ``aggregating``."""
    if event["stage"] == "experts":
        return f"experts {event['done']}/{event['of']}"
    if event["stage"] == "fallback":
        return f"fallback ({event['why']}; a vote of the experts answers)"
    return str(event["stage"])


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
        self.tasks = [rt.task(t) for t in cfg.serving.tasks]  # the shipped config's catalogue
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
        self._created = int(time.time())
        self._index = itertools.count(1)  # skills batches run on threads: next() is atomic, += is not

    # ------------------------------------------------------------------ skills and recruitment

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.05, max_concurrent_batches=2)
    async def _prepare(self, items: list[Ask]) -> list[Any]:
        return await asyncio.to_thread(self._prepare_sync, items)

    def _prepare_sync(self, items: list[Ask]) -> list[Any]:
        """Skills and experts for a micro-batch of this replica's requests; an error stays with its request.

        A request for one expert by name (``model: <expert>``) skips both: it goes to that expert alone.
        """
        out: list[Any] = [None] * len(items)
        by_task: dict[str, list[int]] = {}
        for i, ask in enumerate(items):
            by_task.setdefault(ask.task, []).append(i)
        for task_name, idx in by_task.items():
            pipe = self.pipelines[task_name]
            questions = [Question(task_name, "request", next(self._index), items[i].question) for i in idx]
            routed = [k for k, i in enumerate(idx) if items[i].expert is None]
            t0 = time.perf_counter()
            skills: list[list[str]] = [[] for _ in idx]
            selections: list[list[str]] = [[items[i].expert or ""] for i in idx]
            keyword = UsageMeter.start()
            try:
                if routed and pipe.skill_stage:
                    found = pipe.skill_stage.skills([questions[k] for k in routed])
                    for k, sk in zip(routed, found):
                        skills[k] = list(sk)
                t1 = time.perf_counter()
                if routed:
                    seeds = {items[idx[k]].seed for k in routed}
                    for seed in seeds:  # a question's experts depend on its seed, not on its batch
                        ks = [k for k in routed if items[idx[k]].seed == seed]
                        for k, sel in zip(ks, pipe.router.route([questions[k] for k in ks], [skills[k] for k in ks],
                                                                 seed)):
                            selections[k] = list(sel)
            except Exception as exc:  # noqa: BLE001 - reported per request
                for i in idx:
                    out[i] = exc
                continue
            share = keyword.share(len(routed))  # the keyword LLM's tokens, split over the questions it read
            t2 = time.perf_counter()
            requests = expert_requests(pipe.task, questions, skills)
            ranking = list(pipe.router.ranking or []) + [e for e in self.rt.expert_names
                                                           if e not in (pipe.router.ranking or [])]
            for k, (i, q, sel, req) in enumerate(zip(idx, questions, selections, requests)):
                ask = items[i]
                direct = ask.expert is not None
                out[i] = (Work(q, sel, req, ask.sampling(pipe.sampling_for(ask.seed)), ask.seed, ranking,
                               direct=direct),
                          skills[k], {"skills": t1 - t0, "route": t2 - t1} if not direct else {},
                          share if not direct else {})
        return out

    async def _solve(self, ask: Ask) -> AnswerRecord:
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(self._result(ask), timeout=self.cfg.serving.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 - mapped to a status here, once
            raise self._http_error(exc, ask, t0) from None
        return self._timed(result, t0)

    def _http_error(self, exc: BaseException, ask: Ask, t0: float) -> HTTPError:
        """What the client is told about a request that failed (or ran out of time)."""
        if isinstance(exc, HTTPError):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            return HTTPError(504, f"no answer within {self.cfg.serving.request_timeout_s:g} s (task {ask.task}, "
                                  f"{time.perf_counter() - t0:.1f} s in the system); it may still complete")
        err = user_error(exc)
        if isinstance(err, (Overloaded, Unavailable)):
            return HTTPError(503, str(err), {"Retry-After": "1" if isinstance(err, Overloaded) else "5"})
        if err is None:
            log.error("request %s failed", ask.request_id, exc_info=exc)
            return HTTPError(500, f"internal error ({type(exc).__name__}); the server log has the detail under "
                                  f"request id {ask.request_id}")
        log.info("request %s: %s", ask.request_id, err)
        return HTTPError(422, str(err))

    @staticmethod
    def _timed(result: AnswerRecord, t0: float) -> AnswerRecord:
        result.timings["request"] = round(time.perf_counter() - t0, 6)
        metrics.stages(result.timings)
        return result

    async def _result(self, ask: Ask) -> AnswerRecord:
        async for event in self._answer(ask):
            if "result" in event:
                return event["result"]
        raise RuntimeError("the answer's events ended without its result")

    async def _answer(self, ask: Ask, stream: bool = False) -> AsyncIterator[dict[str, Any]]:
        """A request's way through the system: skills and recruitment here, then the scheduler.

        Yields ``{"result": ...}`` last; with ``stream``, before it the scheduler's events as they come
        (stages reached, the aggregator model's text deltas; see ``Scheduler.solve_stream``). Closing
        it, or cancelling its task (the client went away), cancels the call to the scheduler, which
        frees the request's place there.
        """
        t0 = time.perf_counter()
        ask.stage = "skills"
        prepared = await self._prepare(ask)
        if isinstance(prepared, BaseException):
            raise prepared
        work, skills, timings, keyword_usage = prepared
        pipe = self.pipelines[ask.task]
        ask.stage = "experts"
        if pipe.router.cascade and not work.direct:  # rounds: each asks the scheduler, the pipeline decides when
            result = await asyncio.to_thread(self._cascade, pipe, work, skills)
        elif stream:
            call = self.scheduler.options(stream=True).solve_stream.remote(work)
            result = None
            try:
                async for event in call:
                    if "result" in event:
                        result = event["result"]
                        continue
                    if "stage" in event:
                        ask.stage = stage_text(event)
                    yield event
            finally:
                if result is None:  # closed early, or the client went away
                    call.cancel()
            if result is None:
                raise RuntimeError("the scheduler's stream ended without a result")
        else:
            call = self.scheduler.solve.remote(work)
            try:
                result = await call
            except asyncio.CancelledError:  # the client went away: its place in the scheduler is freed
                call.cancel()
                raise
        ask.stage = "done"
        result.skills = skills
        result.usage = result.usage.plus(keyword_usage)
        timings = {**timings, **result.timings, "total": time.perf_counter() - t0}
        result.timings = {k: round(v, 6) for k, v in timings.items()}
        yield {"result": result}

    @staticmethod
    def _cascade(pipe: Pipeline, work: Work, skills: list[str]) -> AnswerRecord:
        meter = UsageMeter.start()
        s = pipe.solve([work.question], work.seed, [skills])[0]
        return AnswerRecord(answer=s.answer, response=s.response, experts=list(s.experts),
                            expert_answers=[ExpertPick(a.expert, a.pred) for a in s.answers],
                            aggregator=s.aggregator, task=work.question.task, usage=TokenCount.of(meter.share(1)),
                            timings={"experts": s.timings["experts"], "aggregate": s.timings["aggregate"]})

    def _task_for(self, name: str | None) -> str:
        if name is None:
            return self.tasks[0].name
        try:
            task = self.rt.task(name)
        except SkillMoEError as exc:
            raise HTTPError(400, str(exc)) from None
        if task.name not in self.pipelines:
            raise HTTPError(400, f"task {task.name!r} is not served here (serving: {', '.join(self.pipelines)})")
        return task.name

    # ------------------------------------------------------------------ HTTP

    def _ask(self, request: Request, question: str, task: str | None, **kw: Any) -> Ask:
        limit = self.cfg.serving.max_question_chars
        if len(question) > limit:
            raise HTTPError(413, f"question is {len(question)} characters; the limit is {limit}")
        seed = kw.pop("seed", None)
        return Ask(question, self._task_for(task), seed=self.cfg.routing.seed if seed is None else seed,
                   request_id=getattr(request.state, "request_id", ""), **kw)

    @api.post("/v1/solve", response_model=SolveResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": SolveRequest.model_json_schema()}}}})
    async def solve(self, request: Request):
        try:
            body = await self._body(request, SolveRequest)
            result = await self._solve(self._ask(request, body.question, body.task))
        except HTTPError as e:
            return from_error(e)
        return SolveResponse.model_validate(result)

    @api.get("/v1/models")
    async def models(self, request: Request):
        """The pool as the model ``skillmoe`` (recruitment and aggregation), and each expert as a model of
        its own (that expert alone answers, as a plain vLLM server would)."""
        try:
            check_access(request, self.api_key)
        except HTTPError as e:
            return from_error(e)
        return {"object": "list", "data": self._model_cards()}

    @api.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str, request: Request):
        try:
            check_access(request, self.api_key)
            card = next((m for m in self._model_cards() if m["id"] == model_id), None)
            if card is None:
                raise HTTPError(404, f"the model {model_id!r} does not exist here; GET /v1/models lists them",
                                param="model", code="model_not_found")
        except HTTPError as e:
            return from_error(e)
        return card

    def _model_cards(self) -> list[dict[str, Any]]:
        created = self._created
        cards = [{"id": POOL_MODEL, "object": "model", "created": created, "owned_by": "skillmoe",
                  "description": f"the {self.cfg.name} pool: skill-based recruitment of "
                                 f"{len(self.rt.experts)} experts and aggregation"}]
        cards += [{"id": e.name, "object": "model", "created": created, "owned_by": "skillmoe",
                   "description": f"the expert {e.name} alone ({e.engine})"} for e in self.rt.experts]
        return cards

    @api.post("/v1/chat/completions",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": ChatRequest.model_json_schema()}}}})
    async def chat(self, request: Request):
        try:
            body = await self._body(request, ChatRequest)
            if body.n != 1:
                raise HTTPError(400, "n: only n=1 is supported (one answer per request)", param="n")
            expert = None
            if body.model != POOL_MODEL:
                if body.model not in self.rt.expert_names:
                    raise HTTPError(404, f"the model {body.model!r} does not exist here; use {POOL_MODEL!r} or one "
                                         "of the experts GET /v1/models lists", param="model", code="model_not_found")
                expert = body.model
            try:
                users = [m.text() for m in body.messages if m.role == "user"]
            except ValueError as exc:
                raise HTTPError(400, f"messages: {exc}", param="messages") from None
            if not users or not users[-1].strip():
                raise HTTPError(422, "messages need a non-empty user message", param="messages")
            ask = self._ask(request, users[-1], body.task, expert=expert, temperature=body.temperature,
                            top_p=body.top_p, max_tokens=body.max_completion_tokens or body.max_tokens,
                            seed=body.seed)
            rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(self._stream(request, ask, body.model, rid, created, include_usage),
                                         media_type="text/event-stream",
                                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
            solved = await self._solve(ask)
        except HTTPError as e:
            return from_error(e)
        return chat_response(body.model, solved, created, rid)

    async def _stream(self, request: Request, ask: Ask, model: str, rid: str, created: int,
                      include_usage: bool) -> Any:
        """OpenAI's server-sent events: a role chunk, content deltas, a finish chunk, [DONE].

        Until the aggregator writes, a comment line names each stage the request reaches
        (``: stage experts 2/3``), and again every few seconds to keep the connection open. The
        aggregator model's text is sent as it is generated; an answer that comes whole (a vote, a
        cascade, one expert asked by name) is sent at the end. If the aggregator fails part-way, a
        note and then the fallback vote's answer follow the text already sent. A client that
        disconnects cancels its request.
        """
        def event(data: dict[str, Any]) -> str:
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def content(text: str) -> str:
            return event(chat_chunk(model, rid, created, {"content": text}))

        yield event(chat_chunk(model, rid, created, {"role": "assistant", "content": ""}))
        t0 = time.perf_counter()
        deadline = t0 + self.cfg.serving.request_timeout_s
        events = self._answer(ask, stream=True)
        sent: list[str] = []
        fell_back = False  # the aggregator failed part-way: what it wrote is not the start of the answer
        step: asyncio.Future | None = None
        try:
            while True:
                step = step or asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({step}, timeout=max(0.0, min(STREAM_KEEPALIVE_S,
                                                                          deadline - time.perf_counter())))
                if not done:
                    if time.perf_counter() >= deadline:
                        raise asyncio.TimeoutError
                    if await request.is_disconnected():
                        return
                    yield f": stage {ask.stage}\n\n"
                    continue
                item, step = step.result(), None
                if "delta" in item:
                    sent.append(item["delta"])
                    yield content(item["delta"])
                elif "stage" in item:
                    fell_back = fell_back or item["stage"] == "fallback"
                    yield f": stage {stage_text(item)}\n\n"
                else:
                    solved = self._timed(item["result"], t0)
                    break
        except Exception as exc:  # noqa: BLE001 - told to the client in OpenAI's error shape
            yield event(json.loads(bytes(from_error(self._http_error(exc, ask, t0)).body)))
            yield "data: [DONE]\n\n"
            return
        finally:
            if step is not None and not step.done():
                step.cancel()  # the client went away: the scheduler's call is cancelled with it
        text = solved.response
        rest = f"{FALLBACK_NOTE.format(who=solved.aggregator)}{text}" if fell_back and sent else \
            text[len("".join(sent)):]
        for i in range(0, len(rest), STREAM_PIECE_CHARS):
            yield content(rest[i:i + STREAM_PIECE_CHARS])
        yield event({**chat_chunk(model, rid, created, {}, finish="stop"), "skillmoe": skillmoe_extra(solved)})
        if include_usage:
            yield event(chat_chunk(model, rid, created, {}, usage=solved.usage, with_choice=False))
        yield "data: [DONE]\n\n"

    async def _body(self, request: Request, model: Any) -> Any:
        """Access first, then the body's shape: a bad request costs no batch slot."""
        check_access(request, self.api_key)
        return validate(model, await read_json_body(request, self.max_body))

    @api.get("/v1/pool")
    async def pool(self, request: Request):
        try:
            check_access(request, self.api_key)
        except HTTPError as e:
            return from_error(e)
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
            "queued": state["queued"],
            "pending": state["pending"],
            "workers_alive": len(state["alive"]),
            "scheduler_node": state["node_id"],
            "events": state["events"],
        }

    @api.get("/healthz")
    async def healthz(self):
        """Readiness: 200 once this replica and the scheduler with its pool answer; else 503 ``starting``."""
        try:
            state = await asyncio.wait_for(self.scheduler.ready.remote(), timeout=HEALTH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - not up yet (or restarting): not ready, and say so
            return JSONResponse(status_code=503, content={"status": "starting", "stage": "scheduler starting"},
                                headers={"Retry-After": "5"})
        return {"status": "ok", **state}
