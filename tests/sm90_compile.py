"""Compile Triton kernels for sm_90 with ptxas in a subprocess (no GPU needed, interpreter off)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Exits 77 when this Triton lacks the ASTSource/GPUTarget API; defines ``m`` and ``compile_sm90``.
PRELUDE = r"""
import sys
import triton
import triton.language as tl
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:
    sys.exit(77)
from tdfusion_edge.kernels import {module} as m

def compile_sm90(jf, types, consts):
    sig = {{n: "constexpr" if n in consts else types.get(n, "i32") for n in jf.arg_names}}
    triton.compile(ASTSource(fn=jf, signature=sig, constexprs=consts),
                   target=GPUTarget("cuda", 90, 32), options={{"num_warps": 4}})
"""


def assert_compiles_for_sm90(module: str, body: str) -> None:
    """Run ``body`` after the prelude (kernels of ``tdfusion_edge.kernels.<module>`` as ``m``); skip
    when this Triton cannot compile ahead of time."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = PRELUDE.format(module=module) + body
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 77:
        pytest.skip("this Triton has no ASTSource/GPUTarget compile API")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled" in proc.stdout
