"""What answers while a deployment starts: ``/healthz`` is 503 ``starting`` with the progress so far.

``skillmoe serve`` deploys this small app first, on the same route, so load
balancers and Kubernetes-style readiness probes see "not ready yet" (and why)
instead of a closed port during the minutes profiles or models may take; the
real application then replaces it, and ``/healthz`` answers 200.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from . import http

starting_api = FastAPI(title="skillmoe-ray (starting)")
http.install(starting_api)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(starting_api)
class Starting:
    def __init__(self, name: str) -> None:
        self.progress: dict[str, Any] = {"deployment": name, "stage": "starting"}

    def set_progress(self, progress: dict[str, Any]) -> None:
        self.progress = {**self.progress, **progress}

    @starting_api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse(status_code=503, content={"status": "starting", **self.progress},
                            headers={"Retry-After": "5"})

    @starting_api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def everything_else(self, path: str, request: Request) -> JSONResponse:
        return http.error_response(503, f"the server is starting ({self.progress.get('stage')}); retry shortly",
                                   {"Retry-After": "5"})
