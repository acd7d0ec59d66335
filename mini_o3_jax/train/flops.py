"""FLOPs a traced program executes: matmuls and attention kernels counted in its jaxpr, loops times their length.

XLA's `cost_analysis` counts a loop body once (a 28-layer scan as one layer) and gives a Pallas/Mosaic kernel
no FLOPs at all, so it cannot say how much work a training step really does. Counting the jaxpr instead sees
every scan with its length, every rematerialised forward that the backward recomputes, the causal blocks a
splash kernel computes, head_dim padded for the kernel and padded windows: the hardware FLOPs, against which
the model FLOPs of the MFU convention (6 x parameters x tokens + causal attention) are the useful part.

Counted: `dot_general` (2 x output elements x contracted size) and the splash attention kernels (their
matmuls, from the operand shapes: forward 2 (q.k, p.v), dq 3, dkv 4, each 2 x Lq x Lk x D per head, over the
blocks the mask leaves: all for a full mask, (n + 1) / 2n of n x n blocks for a causal one). Elementwise
work, reductions and gathers are not counted (they are memory-bound, not MXU work). A `while` loop of unknown
trip count is counted once and reported; a `cond` counts each branch at the weight `branch_weights` gives it,
else its most expensive branch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp

# causal splash kernels run inside this name scope (`model.attention_backends.splash_attention`)
CAUSAL_SCOPE = "splash_causal"
# matmuls of one splash kernel call, each 2 x Lq x Lk x D per head over the unmasked blocks
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}


@dataclasses.dataclass
class Count:
    matmul: float = 0.0  # dot_general FLOPs
    kernels: float = 0.0  # Pallas attention kernels' FLOPs
    unknown_loops: int = 0  # `while` loops counted once (trip count not static)
    unknown_kernels: list[str] = dataclasses.field(default_factory=list)  # pallas_calls not counted

    @property
    def total(self) -> float:
        return self.matmul + self.kernels


def executed_flops(fn: Callable, *args: Any,
                   branch_weights: Callable[[str], Sequence[float] | None] | None = None) -> Count:
    """FLOPs of `fn(*args)` (arguments may be `jax.ShapeDtypeStruct`s) summed over every device: shapes are
    global outside `shard_map` and one shard's inside it (times the mesh size). `branch_weights(name_stack)`
    says how often each branch of a `cond` runs (the name stack holds the `jax.named_scope`s around it)."""
    closed = jax.make_jaxpr(fn)(*args)
    count = Count()
    _walk(closed.jaxpr, 1.0, count, branch_weights, "")
    return count


def _dot_flops(eqn) -> float:
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)


def _splash_flops(eqn, causal: bool) -> float | None:
    name = str(eqn.params.get("name", ""))
    kind = next((k for k in _SPLASH_MATMULS if k in name.split("_")), None)
    if not name.startswith("splash") or kind is None:
        return None
    q, k = [v.aval for v in eqn.invars
            if getattr(v.aval, "ndim", 0) >= 3 and jnp.issubdtype(v.aval.dtype, jnp.floating)][:2]
    heads, lq, d = math.prod(q.shape[:-2]), q.shape[-2], q.shape[-1]
    lk = k.shape[-2]
    frac = 1.0
    if causal:
        bq = _block_of(eqn, lq)
        n = max(lq // bq, 1)
        frac = (n + 1) / (2 * n)
    return _SPLASH_MATMULS[kind] * 2.0 * heads * lq * lk * d * frac


def _block_of(eqn, lq: int) -> int:
    """The kernel's query block (from its grid: the dimension that splits Lq), else Lq."""
    import re

    meta = str(eqn.params.get("metadata", ""))
    m = re.search(r'"block_q(?:_dkv|_dq)?": (\d+)', meta)
    return int(m.group(1)) if m else lq


def _subjaxprs(params: dict) -> list:
    out = []
    for value in params.values():
        for x in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(x, jex.core.ClosedJaxpr):
                out.append(x.jaxpr)
            elif isinstance(x, jex.core.Jaxpr):
                out.append(x)
    return out


def _walk(jaxpr, mult: float, count: Count, branch_weights, stack: str) -> None:
    """Add `jaxpr`'s FLOPs times `mult` to `count`; `stack`: the name scopes of the equations around it (an
    inner jaxpr's equations carry only the scopes opened inside it)."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        here = f"{stack}/{eqn.source_info.name_stack}"
        if name == "dot_general":
            count.matmul += mult * _dot_flops(eqn)
        elif name == "pallas_call":
            flops = _splash_flops(eqn, CAUSAL_SCOPE in here)
            if flops is None:
                count.unknown_kernels.append(str(eqn.params.get("name", "pallas_call")))
            else:
                count.kernels += mult * flops
        elif name == "scan":
            _walk(eqn.params["jaxpr"].jaxpr, mult * eqn.params["length"], count, branch_weights, here)
        elif name == "cond":
            branches = [b.jaxpr for b in eqn.params["branches"]]
            weights = branch_weights(here) if branch_weights else None
            subs = []
            for b in branches:
                c = Count()
                _walk(b, 1.0, c, branch_weights, here)
                subs.append(c)
            if weights is None:  # an upper bound: the most expensive branch every time
                weights = [1.0 if c is max(subs, key=lambda s: s.total) else 0.0 for c in subs]
            for w, c in zip(weights, subs):
                count.matmul += mult * w * c.matmul
                count.kernels += mult * w * c.kernels
                count.unknown_kernels += c.unknown_kernels
            count.unknown_loops += sum(c.unknown_loops for c in subs)
        elif name == "shard_map":
            mesh = eqn.params["mesh"]
            _walk(eqn.params["jaxpr"], mult * math.prod(mesh.shape.values()), count, branch_weights, here)
        else:
            if name == "while":
                count.unknown_loops += 1
            for sub in _subjaxprs(eqn.params):
                _walk(sub, mult, count, branch_weights, here)
