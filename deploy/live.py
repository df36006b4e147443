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
import time
from pathlib import Path
from typing import Any

from rollout.prompt import PromptConfig
from rollout.sampling import SamplingConfig
from rollout.vllm_engine import EngineConfig

log = logging.getLogger("audio_grpo")


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
        settings = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning")
        self._server = uvicorn.Server(settings)
        task = asyncio.ensure_future(self._server.serve())
        while not self._server.started:
            if task.done():  # e.g. the port is taken
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
    starts = {"n": 0}

    def start(options: dict):
        starts["n"] += 1
        name = f"{config.name}-endpoint" + (f"-{starts['n']}" if starts["n"] > 1 else "")
        actor = actor_class.options(name=name, **options).remote(
            model_path,
            config.rollout.engine,
            config.prompt,
            config.sampling,
            host=config.serve.host,
            port=config.serve.port,
            token=token,
            weight_transfer=weight_transfer,
            wait_s=config.sync.timeout_s,
        )
        url = ray.get(actor.start.remote(), timeout=config.train.generate_timeout_s)
        record = {"url": url, "actor": name, "started": time.time(), "token_required": bool(token)}
        (run_dir / "endpoint.json").write_text(json.dumps(record, indent=1))
        print(f"serving the current policy at {url} (Ray actor {name})", flush=True)
        return actor

    return start
