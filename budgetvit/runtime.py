"""Device, precision and compile choices, resolved once from the config."""
from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass

import torch

from .config import ConfigError

# Peak dense 16-bit matrix throughput (FLOP/s) of known GPUs, for MFU: bf16, or fp16 on the
# V100 and T4, which have no bf16 tensor cores; vendor datasheet figures, dense (no sparsity),
# SXM unless named. BUDGETVIT_PEAK_TFLOPS overrides it.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H200 NVL": 835e12, "H100": 989e12, "H100 PCIe": 756e12,
    "H100 NVL": 835e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "A10G": 70e12,
    "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def peak_for_name(name: str) -> float | None:
    """Peak FLOP/s for a GPU name as CUDA reports it ("NVIDIA H100 PCIe"), None if not in the
    table. The longest name that appears as whole words wins: "L40" is not "L4", and an
    "H100 PCIe" is not the SXM part. None for a MIG slice, which has a part of the GPU's rate."""
    if re.search(r"\bMIG\b", name):
        return None
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w])", name):
            return PEAK_BF16_FLOPS[key]
    return None


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of this device (env BUDGETVIT_PEAK_TFLOPS wins), None if unknown."""
    given = os.environ.get("BUDGETVIT_PEAK_TFLOPS")
    if given:
        try:
            tflops = float(given)
        except ValueError:
            tflops = 0.0
        if not 0 < tflops < float("inf"):  # (nan too)
            raise ConfigError(f"BUDGETVIT_PEAK_TFLOPS={given}: give the GPU's peak dense bf16 "
                              f"rate in TFLOP/s, e.g. 989")
        return tflops * 1e12
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def mfu(model_cfg, img_size: int, img_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: the model's own forward+backward FLOP count per image, times
    images per second, over the device's peak rate."""
    from .models import train_flops
    return train_flops(model_cfg, img_size) * img_per_s / peak


def compile_failure(e: BaseException) -> str | None:
    """What torch.compile failed on (no C compiler, no Python.h, Triton not finding libcuda),
    in one line; None where `e` is not a compile failure."""
    if "torch._dynamo" not in sys.modules:  # (nothing compiled in this process)
        return None
    from torch._dynamo.exc import BackendCompilerFailed
    if not isinstance(e, BackendCompilerFailed):
        return None
    lines = [ln.strip() for ln in str(e).splitlines()
             if ln.strip() and not ln.startswith(("backend=", "Set TORCHDYNAMO_VERBOSE"))]
    return (lines[0] if lines else type(e).__name__)[:300]


def cpu_model() -> str:
    """The processor's name (Linux /proc/cpuinfo), else the machine type."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None = float32
    compile: bool
    compile_scope: str = "blocks"
    compile_mode: str = "default"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def graph_mode(self) -> bool:
        """Compiled to replay CUDA graphs, which torch.compile records at the second call (the
        first runs eagerly): two calls before one is timed."""
        return self.compile and self.compile_mode in ("reduce-overhead", "max-autotune")

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def compiled(self, model, sizes: int, forward=None):
        """The callable a training step runs: `forward` (default: the model) as it is, or
        compiled for `sizes` image sizes, each a static shape. Scope "blocks" compiles each
        transformer block in place; the blocks are the same function, so one compile per
        size serves all of them (several times quicker warm-up than compiling the whole
        model, whose blocks are traced one by one). Scope "model" compiles `forward` whole."""
        forward = model if forward is None else forward
        if not self.compile:
            return forward
        self.allow_graphs(sizes)
        mode = None if self.compile_mode == "default" else self.compile_mode
        if self.compile_scope == "blocks":
            for block in model.blocks:
                block.compile(dynamic=False, mode=mode)
            return forward
        return torch.compile(forward, dynamic=False, mode=mode)

    def go_eager(self) -> None:
        """From now on, run what was compiled as it is (torch.compile failed)."""
        torch.compiler.set_stance("force_eager")
        self.compile = False

    def allow_graphs(self, sizes: int) -> None:
        """Let dynamo keep the graphs of `sizes` image sizes per compiled function (one per
        size, two where blocks with and without drop path differ); past its limit it would
        fall back to eager."""
        import torch._dynamo as dynamo
        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 2 * sizes + 4)

    def settings(self) -> str:
        """Precision and compilation, as a run's header says them."""
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        if not self.compile:
            return f"{precision}, eager"
        mode = "" if self.compile_mode == "default" else f", {self.compile_mode}"
        return f"{precision}, compiled ({self.compile_scope}{mode})"

    def describe(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.device)
        n = torch.get_num_threads()
        return f"cpu ({cpu_model()}, {n} thread{'' if n == 1 else 's'})"


def check_device_option(device: str) -> None:
    """A command's --device cuda where no GPU is visible: one line naming the option (train
    names train.device, in resolve)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible")


def resolve(train_cfg, local_rank: int = 0) -> Runtime:
    want = train_cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    precision = train_cfg.precision
    if precision == "auto":  # fp16 (with loss scaling) on GPUs without bf16 tensor cores
        bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
        precision = "bf16" if bf16 else "fp16" if cuda else "fp32"
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if cuda:  # with autocast, TF32 for the float32 matmuls left outside it; fp32 runs keep
        # full precision (set either way: the setting is the process's, not the run's)
        torch.set_float32_matmul_precision("high" if amp is not None else "highest")
    compile_on = train_cfg.compile == "on" or (train_cfg.compile == "auto" and cuda)
    return Runtime(device, amp, compile_on, train_cfg.compile_scope, train_cfg.compile_mode)
