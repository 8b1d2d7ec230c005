"""The large float model of issue 21: N blocks of MatMul 4096x4096 + Add + Relu, weights in one side file.

Why this model: it is the smallest graph that has what models past protobuf's 2 GB limit have (all
weights in ONNX external data, one file next to the ``.onnx``) and nothing else, so a compile of it
measures what the weights cost: peak memory, time, and whether any step serialises the whole model.
Its size is picked by ``--gb``: N = round(gb * 1e9 / bytes per block), where a block holds a 4096x4096
float32 weight and a 4096 float32 bias (67,125,248 bytes); 0.25 -> 4 blocks, 1 -> 15, 2.4 -> 36.

The weights are seeded (one generator per block, so a block does not depend on N) and He-scaled
(std sqrt(2/4096)), so activations keep their size through the Relu chain; a rerun writes the same
bytes. The side file is written one block at a time (never the whole model in memory), each tensor at
an offset aligned to 64 KiB (ONNX Runtime memory-maps aligned external data instead of copying it);
the ``.onnx`` holds the graph and the tensors' locations (what ``onnx.save_model(...,
save_as_external_data=True, all_tensors_to_one_file=True)`` writes, with aligned offsets).

Command line (write into /tmp or a test's tmp_path, never into the repository)::

    python -m models.make_big /tmp/big/big.onnx --gb 2.4 --calib /tmp/big/calib.npz

writes ``big.onnx``, ``big.onnx.data`` and a calibration file (``--samples`` inputs [16, 4096], seeded).
Input ``"input"`` float32 [1, 16, 4096], output ``"output"``, opset 17 like the rest of the zoo.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

OPSET = 17
HIDDEN = 4096
TOKENS = 16
SEED = 20260421
ALIGN = 1 << 16
BLOCK_BYTES = HIDDEN * HIDDEN * 4 + HIDDEN * 4


def blocks_for(gb: float) -> int:
    """Number of blocks for about ``gb`` * 1e9 bytes of float32 weights (at least one)."""
    return max(1, round(gb * 1e9 / BLOCK_BYTES))


def block_weights(i: int, hidden: int = HIDDEN) -> tuple[np.ndarray, np.ndarray]:
    """Block ``i``'s (weight [hidden, hidden], bias [hidden]), float32, from its own seeded generator."""
    rng = np.random.default_rng([SEED, i])
    w = rng.standard_normal((hidden, hidden), dtype=np.float32) * np.float32(np.sqrt(2.0 / hidden))
    b = rng.standard_normal(hidden, dtype=np.float32) * np.float32(0.01)
    return w, b


def write_model(path: str | os.PathLike[str], n_blocks: int, *, hidden: int = HIDDEN,
                tokens: int = TOKENS) -> Path:
    """Write the model (``path``) and its weights (``path`` + ``.data``, one file) block by block."""
    import onnx
    from onnx import TensorProto, helper

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    x = "input"
    tmp_data = path.parent / (data_name + ".partial")
    with open(tmp_data, "wb") as f:

        def put(name: str, arr: np.ndarray) -> None:
            pad = -f.tell() % ALIGN
            f.write(b"\0" * pad)
            offset = f.tell()
            f.write(arr.astype("<f4", copy=False).tobytes())
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(arr.shape),
                            data_location=TensorProto.EXTERNAL)
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)

        for i in range(n_blocks):
            w, b = block_weights(i, hidden)
            put(f"block{i}.weight", w)
            put(f"block{i}.bias", b)
            del w
            y = "output" if i == n_blocks - 1 else f"block{i}.out"
            nodes += [helper.make_node("MatMul", [x, f"block{i}.weight"], [f"block{i}.mm"], name=f"block{i}.matmul"),
                      helper.make_node("Add", [f"block{i}.mm", f"block{i}.bias"], [f"block{i}.add"],
                                       name=f"block{i}.add"),
                      helper.make_node("Relu", [f"block{i}.add"], [y], name=f"block{i}.relu")]
            x = y
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [1, tokens, hidden])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, tokens, hidden])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_big")
    model.ir_version = 8
    os.replace(tmp_data, path.parent / data_name)
    tmp_model = path.parent / (path.name + ".partial")
    onnx.save_model(model, str(tmp_model))  # the tensors are external already: this writes the graph only
    os.replace(tmp_model, path)
    return path


def write_calib(path: str | os.PathLike[str], samples: int = 16, *, hidden: int = HIDDEN,
                tokens: int = TOKENS) -> Path:
    """Seeded calibration inputs: ``{"input": float32 [samples, tokens, hidden]}``, standard normal."""
    rng = np.random.default_rng([SEED, 1 << 20])
    np.savez(path, input=rng.standard_normal((samples, tokens, hidden), dtype=np.float32))
    return Path(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write issue 21's large float model (weights in one external file).")
    ap.add_argument("out", help="the .onnx file to write (its data goes to OUT.data next to it)")
    ap.add_argument("--gb", type=float, default=0.25, help="float weight size in 1e9 bytes (0.25, 1, 2.4)")
    ap.add_argument("--calib", help="also write a calibration .npz here")
    ap.add_argument("--samples", type=int, default=16, help="calibration samples (each [16, 4096])")
    args = ap.parse_args()
    n = blocks_for(args.gb)
    write_model(args.out, n)
    if args.calib:
        write_calib(args.calib, args.samples)
