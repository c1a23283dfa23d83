"""Inductor CPU: wrong gradients and heap corruption from a gather's backward in a 2-D tiled kernel.

Standalone (torch only). Seen with torch 2.13.0+cpu (x86-64, AVX-512), 2 threads:
``python docs/compile_crash_repro.py [threads]`` (default 2). Expected: errors of float rounding (<= ~1e-5), exit 0.
Got, 10 runs of 10 with 2 threads: the process aborts (SIGABRT, exit 134) in glibc's heap checks
("double free or corruption (!prev)", "munmap_chunk(): invalid pointer", "corrupted double-linked list",
"corrupted size vs. prev_size"); in 7 of them it first prints the wrong gradient of ``a``
(max error 11.86, the first number). With 1 thread (argument ``1``) it is correct, 3 runs of 3.

The defect: the backward of ``a.index_select(0, dst)`` (an ``index_add`` into zeros, an ``atomic_add``
store) is fused with the reduction over the channels that gives ``r``'s gradient (``sum_c g[e, c] W[c, H]``,
``W[:, H]`` being a strided column) into one ``CppTile2DKernel``. Its ``store(mode="atomic_add")`` applies
``transform_indexing`` to the index and then ``CppVecKernel.store`` goes through ``ops.index_expr`` whose
``CppTile2DOverrides.index_expr`` applies it again, so the generated C++ writes at
``x1 + 2L*x1_inner + 16L*dst[e]`` instead of ``x1 + x1_inner + 16L*dst[e]``: wrong rows/channels and up
to 15 floats past the end of the ``[N, 16]`` gradient buffer (``TORCH_LOGS=output_code`` shows it). With
one thread the scalar ``+=`` store path is taken, which transforms the index once.
"""

import sys

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
torch.manual_seed(0)
N, E, H = 38, 476, 16
src, dst = torch.randint(0, N, (2, E))


def f(a, r, W):
    return torch.nn.functional.silu(torch.addcmul(a.index_select(0, dst), r, W[:, H]))


a = torch.randn(N, H, requires_grad=True)
r, W = torch.randn(E, 1, requires_grad=True), torch.randn(H, H + 1, requires_grad=True)
g = torch.randn(E, H)
ref = torch.autograd.grad(f(a, r, W), (a, r, W), g)
out = torch.autograd.grad(torch.compile(f)(a, r, W), (a, r, W), g)
print("max |compiled - eager| for grad a, r, W:", [float((x - y).abs().max()) for x, y in zip(ref, out)], flush=True)
