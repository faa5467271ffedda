"""App: builds the API (FastAPI) and deploys it as the Ray Serve ingress on the head node."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Response

from archipelag import __version__
from archipelag.metrics.trace import Arrivals
from archipelag.nodes import COORDINATOR_RESOURCE
from archipelag.serve import (
    api_accounts,
    api_admin,
    api_hosts,
    api_images,
    api_jobs,
    api_market,
    api_openai,
    api_resources,
)
from archipelag.serve.api_batches import router as batches_router
from archipelag.serve.api_earnings import router as earnings_router
from archipelag.serve.api_metrics import install_metrics
from archipelag.serve.bodies import install_body_limits
from archipelag.serve.listener import Listener, listen
from archipelag.serve.responses import FastJSON, install_error_handlers
from archipelag.serve.services import Services
from archipelag.settings import Settings
from archipelag.web.routes import install_web

log = logging.getLogger(__name__)
APP_NAME = "archipelag"


def build_api(services: Services) -> FastAPI:
    app = FastAPI(title="Archipelag", version=__version__)
    app.state.services = services
    install_error_handlers(app)
    install_body_limits(app, services.settings)
    install_metrics(app, services.jobs)  # counts every answer, a refused body's too
    if services.settings.trace_file is not None:
        app.add_middleware(Arrivals)  # outermost: when the request reached this replica (metrics.trace)

    @app.get("/health")
    async def health() -> Response:
        return FastJSON({"status": "ok", "version": __version__})

    app.include_router(api_jobs.router)
    app.include_router(batches_router)
    app.include_router(api_resources.router)
    app.include_router(api_images.router)
    app.include_router(api_accounts.router)
    app.include_router(earnings_router)
    app.include_router(api_admin.router)
    app.include_router(api_hosts.router)
    app.include_router(api_market.router)
    app.include_router(api_openai.router)
    install_web(app)
    return app


def _replica_grpc_on_loopback() -> None:
    """Ray Serve 2.60 starts each replica's gRPC server (proxy → replica) on ``[::]:0``, every interface, whatever
    the node's address (hard-coded in ray/serve/_private/replica.py, no setting). On a loopback node, as in the
    embedded network, it listens on loopback instead: the proxy is on the same node (HeadOnly, replicas pinned to
    the head). Called in the replica before Serve starts that server; elsewhere it changes nothing."""
    import ray
    from ray.serve._private import replica

    node_ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    add_port: Any = replica.add_port_to_grpc_server  # type: ignore[attr-defined]
    if node_ip not in {"127.0.0.1", "::1"} or getattr(add_port, "on_loopback", False):
        return
    host = f"[{node_ip}]" if ":" in node_ip else node_ip

    def on_loopback(server: Any, address: str) -> Any:
        return add_port(server, address.replace("[::]:", f"{host}:", 1))

    on_loopback.on_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_loopback  # type: ignore[attr-defined]


def _ingress_class(replicas: int) -> Any:
    from ray import serve

    @serve.deployment(
        name="Ingress", num_replicas=replicas, max_ongoing_requests=2000,
        ray_actor_options={"num_cpus": 0, "resources": {COORDINATOR_RESOURCE: 1}},
    )
    @serve.ingress()
    class Ingress:
        def __init__(self, settings: Settings) -> None:
            logging.basicConfig(level=logging.INFO)
            _replica_grpc_on_loopback()
            self._services = Services.build(settings)
            self._listener: Listener | None = None

        async def __serve_build_asgi_app__(self) -> FastAPI:
            app = build_api(self._services)
            settings = self._services.settings
            self._listener = listen(app, settings.api_host, settings.api_port)  # clients reach it straight
            return app

        def check_health(self) -> None:
            if self._listener is not None and not self._listener.serving:
                raise RuntimeError("this replica's HTTP listener stopped")

    return Ingress


def deploy(settings: Settings) -> None:
    """Run the ingress replicas on the head (returns once they are ready), each answering HTTP on the API's
    address itself (``listener``): Serve's own proxy is not started. Any replica serves any request: they hold
    HTTP only."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    serve.run(_ingress_class(settings.ingress_replicas).bind(settings), name=APP_NAME, route_prefix="/", blocking=False)


def undeploy() -> None:
    from ray import serve

    serve.shutdown()  # type: ignore[no-untyped-call]
