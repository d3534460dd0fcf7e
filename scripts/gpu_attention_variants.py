"""Time forms of the attention core, softmax(q k^T) v over (batch, heads, frames, head_dim), in MAX and torch.

A measurement for the GPU (issue 19: MAX's matmul attention at batch 16 took 12.9 ms a block where torch
took 0.52): which form of the same arithmetic reaches MAX's fast matmul kernels. Forms:
  4d        q (B,H,T,D) @ transpose(k) (B,H,D,T), softmax, @ v: what graph_ops.attention builds today
  3d        the same with batch and heads folded into one axis: (B*H,T,D) @ (B*H,D,T)
  kt        k handed over already as (B,H,D,T) by one permute of (B,T,H,D), no separate transpose
Each form is one graph with a symbolic batch, so batches share it. Every output is checked against
torch float64. Writes a JSON line per (form, dtype, batch) to --out.

    python3 scripts/gpu_attention_variants.py --device gpu --dtypes float16,float32 --batch 1,16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from max.dtype import DType
from max.graph import Graph, TensorType, ops

from fidelity.candidates.max_engine import compile_graph, device_ref, session_for
from fidelity.precisions import max_dtype, torch_dtype

FORMS = ("4d", "3d", "kt")


def build(form: str, dtype: str, device: str, heads: int, frames: int, head_dim: int) -> Graph:
    """The attention core in one form; inputs q, k, v as (batch, frames, heads, head_dim) in `dtype`."""
    kind = TensorType(max_dtype(dtype), ["batch", frames, heads, head_dim], device=device_ref(device))
    with Graph(f"attention_{form}_{dtype}_{device}", input_types=[kind, kind, kind]) as graph:
        q, k, v = (value.tensor for value in graph.inputs)
        qh, vh = ops.permute(q, [0, 2, 1, 3]), ops.permute(v, [0, 2, 1, 3])  # (B, H, T, D)
        if form == "kt":
            scores = qh @ ops.permute(k, [0, 2, 3, 1])
        elif form == "3d":
            fold = (-1, frames, head_dim)
            scores = ops.reshape(ops.reshape(qh, fold) @ ops.transpose(ops.reshape(ops.permute(k, [0, 2, 1, 3]),
                                                                                     fold), 1, 2),
                                 ("batch", heads, frames, frames))
        else:
            scores = qh @ ops.transpose(ops.permute(k, [0, 2, 1, 3]), 2, 3)
        weights = ops.softmax(scores.cast(DType.float32), axis=-1).cast(max_dtype(dtype))
        if form == "3d":
            out = ops.reshape(ops.reshape(weights, (-1, frames, frames)) @ ops.reshape(vh, (-1, frames, head_dim)),
                              ("batch", heads, frames, head_dim))
        else:
            out = weights @ vh
        graph.output(ops.permute(out, [0, 2, 1, 3]).cast(DType.float32))
    return graph


def median_ms(fn, sync, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="gpu")
    parser.add_argument("--dtypes", default="float16,float32")
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="attention_variants.jsonl")
    args = parser.parse_args()
    session, accelerator = session_for(args.device)
    on_gpu = args.device == "gpu"
    torch_device = torch.device("cuda" if on_gpu else "cpu")

    def sync():
        accelerator.synchronize()
        if on_gpu:
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    with open(args.out, "w") as out:
        for dtype in args.dtypes.split(","):
            models = {}
            for form in args.forms.split(","):
                compiled, seconds, cached = compile_graph(build(form, dtype, args.device, args.heads, args.frames,
                                                                args.head_dim), f"attention-{form}", args.device)
                models[form] = (session.init(compiled), seconds)
            for batch in (int(b) for b in args.batch.split(",")):
                shape = (batch, args.frames, args.heads, args.head_dim)
                q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
                tq, tk, tv = (torch.from_numpy(a).to(torch_device).permute(0, 2, 1, 3) for a in (q, k, v))
                exact = torch.softmax(tq.double() @ tk.double().transpose(-1, -2), -1) @ tv.double()
                low = [t.to(torch_dtype(dtype)) for t in (tq, tk, tv)]

                def torch_attention():
                    w = torch.softmax((low[0] @ low[1].transpose(-1, -2)).float(), -1).to(low[0].dtype)
                    return w @ low[2]

                torch_ms = median_ms(torch_attention, sync, args.repeats, args.warmup)
                torch_err = float((torch_attention().double() - exact).norm() / exact.norm())
                from max.driver import Buffer
                feeds = [Buffer.from_dlpack(torch.from_numpy(a).to(torch_dtype(dtype)).contiguous()).to(accelerator)
                         for a in (q, k, v)]
                for form, (model, seconds) in models.items():
                    ms = median_ms(lambda model=model: model.execute(*feeds), sync, args.repeats, args.warmup)
                    got = torch.from_numpy(np.array(model.execute(*feeds)[0].to_numpy())).permute(0, 2, 1, 3)
                    err = float((got.double().to(exact.device) - exact).norm() / exact.norm())
                    row = {"form": form, "dtype": dtype, "batch": batch, "max_ms": round(ms, 3),
                           "torch_eager_ms": round(torch_ms, 3), "max_rel_err": err, "torch_rel_err": torch_err,
                           "compile_s": round(seconds, 1)}
                    out.write(json.dumps(row) + "\n")
                    print(row, flush=True)


if __name__ == "__main__":
    main()
