"""Small autograd helpers shared by the Triton ops' differentiable backward levels."""
from __future__ import annotations

import torch


def needs_grad(ctx, n: int) -> list[bool]:
    """``ctx.needs_input_grad`` of the first ``n`` inputs as plain bools."""
    return [bool(x) for x in ctx.needs_input_grad[:n]]


def recompute_vjp(fn, inputs, needs, grad_outputs):
    """VJP of the differentiable torch function ``fn`` at ``inputs``.

    Inputs that already carry history are aliased (not detached) when a graph is being built,
    so the result stays differentiable with respect to the caller's tensors.
    """
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        xs = []
        for x in inputs:
            if x is None or not x.is_floating_point():
                xs.append(x)
            elif create and x.requires_grad:
                xs.append(x.view_as(x))
            else:
                xs.append(x.detach().requires_grad_(True))
        outs = fn(*xs)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs)
                 if o is not None and g is not None and o.requires_grad]
        wanted = [i for i, (x, n) in enumerate(zip(xs, needs)) if n and x is not None]
        result = [None] * len(inputs)
        if pairs and wanted:
            grads = torch.autograd.grad([o for o, _ in pairs], [xs[i] for i in wanted],
                                        [g for _, g in pairs], allow_unused=True, create_graph=create)
            for i, g in zip(wanted, grads):
                result[i] = g
    return result
