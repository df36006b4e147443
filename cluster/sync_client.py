"""The inference side of a weight transfer as vLLM's trainer engines see it (`VLLMWeightSyncClient`):
every receiver (rollout workers, the live endpoint) is a Ray actor, and each call fans out to all
of them with a deadline.

vLLM's own `RayVLLMWeightSyncClient` waits without a deadline and hands every engine the same init
info; here each engine gets its own ranks in the transfer group, a receiver that raises or does not
answer within `timeout_s` is named in `SyncFailed` (the driver replaces it and re-runs the sync
whole), and `finish_weight_update` carries the policy version the receivers adopt.
"""

from __future__ import annotations

from typing import Any


class SyncFailed(RuntimeError):
    """Some receivers failed a weight-transfer call: `failed` maps receiver index to the reason."""

    def __init__(self, call: str, failed: dict[int, str]):
        self.call, self.failed = call, failed
        listed = "; ".join(f"receiver {i}: {reason}" for i, reason in sorted(failed.items()))
        super().__init__(f"{call} failed on {len(failed)} receiver(s): {listed}")

    def __reduce__(self):  # crosses Ray as itself
        return (SyncFailed, (self.call, self.failed))


class ReceiverClient:
    """Fans each weight-transfer call out to `receivers` (actor handles with the four methods)."""

    def __init__(self, receivers: list, ranks_per_receiver: list[int], timeout_s: float):
        self.receivers, self.ranks, self.timeout_s = receivers, ranks_per_receiver, timeout_s
        self.version = 0  # set by the sender before each update

    def _fan_out(self, call: str, args_per_receiver: list[tuple]) -> None:
        import ray

        futures = [
            getattr(r, call).remote(*args) for r, args in zip(self.receivers, args_per_receiver, strict=True)
        ]
        done, _ = ray.wait(futures, num_returns=len(futures), timeout=self.timeout_s)
        failed: dict[int, str] = {}
        for i, future in enumerate(futures):
            if future not in done:
                failed[i] = f"no answer within {self.timeout_s:.0f}s (sync.timeout_s)"
                continue
            try:
                ray.get(future)
            except Exception as err:  # noqa: BLE001 - named per receiver
                failed[i] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        if failed:
            raise SyncFailed(call, failed)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        offsets, rank = [], init_info["rank_offset"]
        for n in self.ranks:  # each engine's tensor-parallel workers take the next ranks
            offsets.append(({**init_info, "rank_offset": rank},))
            rank += n
        self._fan_out("init_weight_transfer_engine", offsets)

    def start_weight_update(self) -> None:
        self._fan_out("start_weight_update", [()] * len(self.receivers))

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._fan_out("update_weights", [(update_info,)] * len(self.receivers))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = int(weight_version) if weight_version is not None else self.version
        self._fan_out("finish_weight_update", [(version,)] * len(self.receivers))
