"""Intra-op threads for the simulators' kernels: how many, and a scope that sets and restores them.

Why. torch's default is one thread per core. A parallel region costs more than the work of a
small state, and when another process shares a core every barrier waits for the thread that was
descheduled: the 8-qubit, batch-32 training step took 3 ms on a quiet machine and 236 ms beside one
busy process. So a small state runs at one thread and only large ones get more (``kernel_threads``).

torch's count is per OS thread on its OpenMP builds: ``torch.set_num_threads`` sets the calling
thread's count and a process-wide value that seeds each thread's count at its first parallel
kernel (or ``torch.get_num_threads()``). A scope here therefore leaves other threads' counts
alone, but a thread that sets its count before that first kernel is re-seeded then, possibly from
another thread's scope; ``set_threads`` settles the calling thread first (``tests/test_exact.py``
checks both on the installed torch).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch.autograd.function import once_differentiable

# Amplitudes (state size × batch) one more thread needs before it pays: below this a second thread
# gains little on a quiet machine and loses many times over beside a busy process (measured with the
# training step of bench/engine.py at 1 and 2 threads, quiet and loaded).
MIN_AMPLITUDES_PER_THREAD = 2**21


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def idle_cores() -> int:
    """Usable cores minus the runnable threads of other processes, now; at least one.

    Beside a busy process a second thread cannot get a core of its own, and every barrier waits
    for it. ``/proc/loadavg`` counts every runnable thread on the machine; this process's own (an
    OpenMP worker still spinning after a parallel region, too) are taken off, so a step is not
    its own load. Without ``/proc`` (not Linux) every usable core counts as idle.
    """
    cores = usable_cores()
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        mine = 0
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/stat") as f:  # OSError: it ended
                mine += f.read().rsplit(")", 1)[1].split()[0] == "R"
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, min(cores, cores - (running - mine)))


def kernel_threads(amplitudes: int) -> int:
    """Threads for kernels over ``amplitudes`` complex numbers (state size × batch).

    One per ``MIN_AMPLITUDES_PER_THREAD`` amplitudes, at least one, and never more than the calling
    thread's ``torch.get_num_threads()`` (the caller's ``torch.set_num_threads``, which is how tasks
    apply ``QLLM_TASK_THREADS``), the usable cores, nor the cores that other processes leave idle.
    """
    wanted = min(amplitudes // MIN_AMPLITUDES_PER_THREAD, torch.get_num_threads(), usable_cores())
    return 1 if wanted <= 1 else min(wanted, idle_cores())


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` for the calling thread, safe against other threads' scopes.

    Reading the count first runs torch's lazy per-thread initialisation, so no later re-seeding from
    the process-wide value (which a concurrent scope may have changed) can replace ``n``.
    """
    torch.get_num_threads()
    torch.set_num_threads(n)


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """The block at ``n`` torch threads in the calling thread; its previous count restored after."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_at_threads(run: Callable[..., torch.Tensor], threads: int, *inputs: torch.Tensor | None) -> torch.Tensor:
    """``run(*inputs)`` with its forward and, when it is differentiated, its backward at ``threads``."""
    if threads == torch.get_num_threads():
        return run(*inputs)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return cast("torch.Tensor", _AtThreads.apply(run, threads, *inputs))
    with intra_op_threads(threads):
        return run(*inputs)


class _AtThreads(torch.autograd.Function):
    """Autograd runs a CPU graph's backward on the thread that calls ``backward()``, after any scope
    around the forward has exited; so the forward's graph is built inside this node and
    differentiated in its backward, in the same scope."""

    @staticmethod
    def forward(ctx: Any, run: Callable[..., torch.Tensor], threads: int, *inputs: torch.Tensor | None) -> torch.Tensor:
        needs = ctx.needs_input_grad[2:]
        leaves = [t.detach().requires_grad_(r) if t is not None else None for t, r in zip(inputs, needs, strict=True)]
        with torch.enable_grad(), intra_op_threads(threads):
            out = run(*leaves)
        ctx.threads, ctx.out, ctx.leaves = threads, out, leaves
        return out.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        wanted = [t for t in ctx.leaves if t is not None and t.requires_grad]
        # Keep the inner graph exactly when the outer backward keeps its own (retain_graph=True).
        keep = torch._C._autograd._get_current_graph_task_keep_graph()
        with intra_op_threads(ctx.threads):
            grads = iter(torch.autograd.grad(ctx.out, wanted, grad, retain_graph=keep, allow_unused=True))
        return (None, None, *(next(grads) if t is not None and t.requires_grad else None for t in ctx.leaves))
