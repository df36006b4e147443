"""A narrow fix to vLLM, installed in every vLLM process by our plugin (`rollout.weight_transfer.register`).

vLLM 0.32's CPU mixture-of-experts kernels prepack the expert weights into their grouped-GEMM
layout when a model loads. A weight update (layer-wise reload) runs the same set-up again, but
`UnquantizedFusedMoEMethod._setup_kernel` sees the kernel already built, copies the new plain
weights into the packed storage and skips the prepack: the engine then reads plain weights as
packed and answers wrongly after every update (tests/test_moe.py shows it). The fix prepacks what
an update brought, only for CPU experts: GPU kernels do not prepack, and nothing changes there.
"""

from __future__ import annotations

FIXED_IN = (0, 32)  # the vLLM release line this fix is for; a newer one is checked by tests/test_moe.py


def install() -> None:
    """Idempotent; only on vLLM 0.32.x."""
    import vllm

    if tuple(vllm.__version_tuple__[:2]) != FIXED_IN:
        return
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

    original = UnquantizedFusedMoEMethod._setup_kernel
    if getattr(original, "prepacks_updates", False):
        return

    def setup_kernel(self, layer, w13, w2) -> None:
        updating = self.moe_kernel is not None
        original(self, layer, w13, w2)
        experts = self.moe_kernel.fused_experts
        if updating and isinstance(experts, CPUUnquantizedExperts):
            experts.process_weights_after_loading(layer)  # the prepack the update skipped

    setup_kernel.prepacks_updates = True
    UnquantizedFusedMoEMethod._setup_kernel = setup_kernel
