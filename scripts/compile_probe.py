"""Whether torch.compile works on a device: a small function compiled and run there.

    python scripts/compile_probe.py cuda|cpu

Its last line is what scripts/gpu_check.sh reads: "compile works", "compile works with
TRITON_LIBCUDA_PATH=DIR", or "compile fails: CAUSE" (exit 1), so that a machine where compiling
fails still gives eager figures instead of a check whose every compiled step fails.

On CUDA, Triton finds the driver's libcuda.so.1 through TRITON_LIBCUDA_PATH, else ldconfig's
cache, else LD_LIBRARY_PATH; a container may mount it where none of them says. A probe that
fails on CUDA tries once more in a new process, with TRITON_LIBCUDA_PATH set to the folder this
process loaded the library from.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from budgetvit.runtime import compile_failure  # noqa: E402 (after the path)


def failure(device: str) -> str | None:
    """Why torch.compile fails on `device`, in a line; None where it works."""
    f = torch.compile(lambda x: (x * 2).sin() + 1, dynamic=False)
    try:
        f(torch.randn(64, device=device))
        if device == "cuda":
            torch.cuda.synchronize()
        return None
    except Exception as e:
        return compile_failure(e) or f"{type(e).__name__}: {e}".splitlines()[0]


def loaded_libcuda() -> str | None:
    """The folder of the libcuda.so this process loaded, from its memory map."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith("libcuda.so"):
                return os.path.dirname(path)
    return None


def main(device: str) -> int:
    cause = failure(device)
    if cause is None:
        print("compile works")
        return 0
    folder = loaded_libcuda() if device == "cuda" else None
    if folder and not os.environ.get("TRITON_LIBCUDA_PATH"):
        again = subprocess.run([sys.executable, __file__, device], capture_output=True,
                               env={**os.environ, "TRITON_LIBCUDA_PATH": folder})
        if again.returncode == 0:
            print(f"compile works with TRITON_LIBCUDA_PATH={folder}")
            return 0
    print(f"compile fails: {cause}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
