"""The HTTP endpoint inside a training job (`audio-grpo train --serve`).

A Ray actor on its own placement bundle (the size of a rollout worker's) runs the same FastAPI app
and `PolicyEngine` as `audio-grpo serve`, and is one more receiver of the learner's weight transfer:
the driver's pool adds it to the receivers, so every update reaches it like a rollout worker, and
answers come from the newest policy, with the exact `policy_version` that produced them. When it
fails an update or dies, the pool replaces it on the same bundle and port and sends it the current
weights. Where it listens is printed and written to RUN_DIR/endpoint.json.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

from rollout.prompt import PromptConfig
from rollout.sampling import SamplingConfig
from rollout.vllm_engine import EngineConfig

log = logging.getLogger("audio_grpo")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), or a RuntimeError that names it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a replacement reuses the port
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        raise RuntimeError(
            f"the live endpoint cannot listen on {host}:{port} ({error.strerror}); "
            "choose another --serve-port (0: any free port)"
        ) from error
    listening.listen(2048)
    listening.set_inheritable(True)
    return listening


class LiveEndpoint:
    """Ray actor body (async): the endpoint and its four weight-transfer calls."""

    def __init__(
        self,
        model_path: str,
        engine: EngineConfig,
        prompt: PromptConfig,
        sampling: SamplingConfig,
        *,
        host: str,
        port: int,
        token: str | None,
        weight_transfer: str,
        wait_s: float,
    ):
        self.args = (model_path, engine, prompt, sampling)
        self.host, self.port, self.token = host, port, token
        self.weight_transfer, self.wait_s = weight_transfer, wait_s
        self.policy = None
        self._server = None

    async def start(self) -> str:
        """Start the engine and the HTTP server; return the URL once it accepts connections."""
        import uvicorn

        from deploy.policy import PolicyEngine
        from deploy.server import create_app

        model_path, engine, prompt, sampling = self.args
        engine = EngineConfig(**{**vars(engine), "in_process": False})
        self.policy = PolicyEngine(
            model_dir=model_path,
            engine=engine,
            prompt=prompt,
            sampling=sampling,
            weight_transfer=self.weight_transfer,
        )
        app = create_app(lambda: self.policy, token=self.token)
        # Bind here, not in uvicorn: its bind failure is a sys.exit inside the actor's event loop,
        # which never returns to the caller; ours is a clear error at once. Port 0: any free port.
        listening = bind_socket(self.host, self.port)
        self.port = listening.getsockname()[1]
        settings = uvicorn.Config(app, log_level="warning")
        self._server = uvicorn.Server(settings)
        task = asyncio.ensure_future(self._server.serve(sockets=[listening]))
        while not self._server.started:
            if task.done():
                where = f"{self.host}:{self.port}"
                raise RuntimeError(f"the endpoint did not start on {where}: {task.exception()}")
            await asyncio.sleep(0.05)
        return f"http://{self.host}:{self.port}"

    async def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        await self.policy.join_weight_transfer(init_info)

    async def start_weight_update(self) -> None:
        await self.policy.start_update(self.wait_s)

    async def update_weights(self, update_info: dict[str, Any]) -> None:
        await self.policy.receive_update(update_info)

    async def finish_weight_update(self, version: int) -> None:
        await self.policy.finish_update(version)

    async def get_policy_version(self) -> int:
        return self.policy.info.version


def endpoint_starter(config, model_path: str, run_dir: Path, token: str | None, weight_transfer: str):
    """`start(options) -> actor`: starts (or restarts) the live endpoint with Ray `.options`; the
    pool calls it with the endpoint's placement bundle."""
    import ray

    actor_class = ray.remote(LiveEndpoint)
    starts = {"n": 0, "port": config.serve.port}

    def start(options: dict):
        starts["n"] += 1
        name = f"{config.name}-endpoint" + (f"-{starts['n']}" if starts["n"] > 1 else "")
        actor = actor_class.options(name=name, **options).remote(
            model_path,
            config.rollout.engine,
            config.prompt,
            config.sampling,
            host=config.serve.host,
            port=starts["port"],
            token=token,
            weight_transfer=weight_transfer,
            wait_s=config.sync.timeout_s,
        )
        url = ray.get(actor.start.remote(), timeout=config.train.generate_timeout_s)
        starts["port"] = int(url.rsplit(":", 1)[1])  # a replacement listens where users already look
        record = {"url": url, "actor": name, "started": time.time(), "token_required": bool(token)}
        (run_dir / "endpoint.json").write_text(json.dumps(record, indent=1))
        print(f"serving the current policy at {url} (Ray actor {name})", flush=True)
        return actor

    return start
