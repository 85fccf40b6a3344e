"""The packed engine (:mod:`sbnkit.deploy`) vs PyTorch float32 on the same mode network.

Three parts:

* ``sizes`` (deterministic): weight bytes of PyTorch float32 vs the packed engine for the MLP
  784-4096-4096-10 and the conv net; checkpoint vs export file of ``configs/fmnist_default.toml``
  (an untrained model of the config: the tensors, hence the bytes, are those of a trained one);
* ``latency``: median latency of ``predict`` (numba and numpy kernels) and of the PyTorch mode
  network (``binarize``-d weights as float32, BatchNorm, ``sign``) at batch 1 and 64, with one
  thread and with all threads; each thread count runs in its own process with
  ``OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS`` set, so numpy's BLAS and numba honour it too;
* ``fmnist``: the engine's argmax against PyTorch's on every Fashion-MNIST test image, for a
  trained checkpoint (``--checkpoint``) or a model trained here from ``fmnist_default.toml``
  (``--quick``: one epoch); counts units of the pixel-reading layer whose state differs (float
  round-off at the threshold) and examples whose argmax differs. Skipped when the data is missing.

Models: MLP 784-4096-4096-10 with BatchNorm and binary weights in both hidden layers (the first
reads pixels, so it runs on floats with packed weights; the head is float32); the conv net of
``configs/compare/conv.toml`` (3x3 convs 16-32-64, stride 1-2-2, padding 1) with BatchNorm and
binary weights in all three convs, average-pooled float head.

    .venv/bin/python benchmarks/bench_deploy.py [--quick] [--parts sizes,latency,fmnist]
        [--checkpoint runs/fmnist_default/model.pt] [--reps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sbnkit import binarize, deploy, models
from sbnkit import data as data_lib
from sbnkit.network import SBN
from sbnkit.train import build_model, checkpoint, load_config
from sbnkit.units import Rule, using_rule

ROOT = Path(__file__).resolve().parent.parent
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def build(name: str) -> SBN:
    """A benchmark model with seeded weights and BatchNorm statistics of both signs."""
    torch.manual_seed(0)
    if name == "mlp":
        model = models.mlp(
            (1, 28, 28),
            10,
            hidden=(4096, 4096),
            norm="batch",
            binary_weights=True,
            weight_mode="mode",
        )
    else:
        model = models.convnet(
            (1, 28, 28),
            10,
            channels=(16, 32, 64),
            norm="batch",
            binary_weights=True,
            weight_mode="mode",
        )
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-3, 3)
            m.running_var.uniform_(1, 4)
            m.weight.data.uniform_(-1, 1)
    return model.eval()


def float_twin(model: SBN) -> SBN:
    """The mode network in PyTorch float32: plain ±1 weights, units at z = 0."""
    twin = binarize(model).float().eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def torch_bytes(model: torch.nn.Module) -> int:
    """float32 bytes of all parameters and statistics (the float model's weight memory)."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return sum(4 * t.numel() for t in tensors)


def engine_bytes(engine: deploy.Engine) -> tuple[int, int]:
    """(bytes of the packed binary weights, resident bytes of the engine's weight arrays right
    after load: packed words, float32 weights, conv padding corrections)."""
    packed = sum(layer.words.nbytes for layer in engine.layers if layer.words is not None)
    resident = 0
    for layer in engine.layers:
        for a in (layer.words, layer._floats, layer.correction):
            resident += 0 if a is None else a.nbytes
    return packed, resident


def sizes(tmp: Path) -> dict:
    out = {}
    for name in ("mlp", "conv"):
        model = build(name)
        path = tmp / f"{name}.npz"
        deploy.export(model, path)
        engine = deploy.load(path, kernel="numpy")
        packed, resident = engine_bytes(engine)
        binary_float = sum(
            4 * layer.k * layer.words.shape[0] for layer in engine.layers if layer.words is not None
        )
        out[name] = {
            "torch_float32_bytes": torch_bytes(float_twin(model)),
            "binary_layers_float32_bytes": binary_float,
            "binary_layers_packed_bytes": packed,
            "engine_resident_bytes": resident,
            "export_file_bytes": path.stat().st_size,
        }
    cfg = load_config(ROOT / "configs" / "fmnist_default.toml")
    torch.manual_seed(0)
    model = build_model(cfg)
    checkpoint.save(tmp / "model.pt", model, cfg.to_dict())
    deploy.export(model, tmp / "fmnist_default.npz")
    ck, ex = (tmp / "model.pt").stat().st_size, (tmp / "fmnist_default.npz").stat().st_size
    out["fmnist_default"] = {"checkpoint_bytes": ck, "export_file_bytes": ex, "ratio": ck / ex}
    return out


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def latency_worker(threads: int, reps: int, tmp: Path) -> dict:
    """Latencies (ms) in this process, which runs with ``threads`` threads."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {}
    for name in ("mlp", "conv"):
        model = build(name)
        path = tmp / f"{name}-lat.npz"
        deploy.export(model, path)
        twin = float_twin(model)
        engines = {k: deploy.load(path, kernel=k) for k in deploy.KERNELS}
        for batch in (1, 64):
            x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
            xt = torch.from_numpy(x)

            def run_torch(xt=xt, twin=twin):
                with torch.no_grad(), using_rule(twin, Rule("det_st")):
                    return twin(xt)

            row = {"torch": _median_ms(run_torch, reps)}
            for k, engine in engines.items():
                row[k] = _median_ms(lambda engine=engine, x=x: engine.predict(x), reps)
            out[f"{name} batch {batch}"] = row
    return out


def latency(reps: int, tmp: Path) -> dict:
    result = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
        cmd = [sys.executable, __file__, "--worker", str(threads), "--reps", str(reps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        result[threads] = json.loads(proc.stdout.splitlines()[-1])
    return result


def latency_table(result: dict) -> str:
    """The latencies as a markdown table (ms; speed-up = PyTorch / numba engine)."""
    lines = [
        "| model | batch | threads | PyTorch float32 | engine numba | engine numpy | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for threads, rows in result.items():
        for key, row in rows.items():
            name, _, batch = key.partition(" batch ")
            lines.append(
                f"| {name} | {batch} | {threads} | {row['torch']:.3f} | {row['numba']:.3f} | "
                f"{row['numpy']:.3f} | {row['torch'] / row['numba']:.2f}× |"
            )
    return "\n".join(lines)


def fmnist(checkpoint_path: str | None, quick: bool, tmp: Path) -> dict | None:
    """Argmax agreement of engine and PyTorch on the whole Fashion-MNIST test set."""
    try:
        x_test, y_test = data_lib.load("fashion_mnist", "test", None, True)
    except Exception as exc:  # noqa: BLE001 - report and skip without data
        print(f"fmnist: skipped ({exc})", file=sys.stderr)
        return None
    if checkpoint_path:
        model = deploy.source.load_model(checkpoint_path, allow_config=False).model
    else:
        from sbnkit.train import fit, prepare

        overrides = ["train.epochs=1"] if quick else []
        cfg = load_config(ROOT / "configs" / "fmnist_default.toml", overrides)
        run = prepare(cfg)
        fit(run, progress=False)
        model = run.model
    model.eval()
    deploy.export(model, tmp / "fm.npz")
    engine = deploy.load(tmp / "fm.npz")
    twin = float_twin(model)
    x = x_test.float()
    with torch.no_grad(), using_rule(twin, Rule("det_st")):
        logits_torch = twin(x).numpy()
        first = [s for s in twin.stages if not isinstance(s, torch.nn.Flatten)][0]
        x_first = x.flatten(1) if isinstance(first.op, torch.nn.Linear) else x
        states_torch = first(x_first).numpy() < 0
        t_torch = first.op(x_first) - (0 if first.op.bias is None else first.op.bias)
    trace = engine.trace(x.numpy())
    states_engine = trace[0][1]
    t_torch = t_torch.numpy()
    if states_engine.ndim == 4:
        states_torch = states_torch.transpose(0, 2, 3, 1)
        t_torch = t_torch.transpose(0, 2, 3, 1)
    differ = states_engine != states_torch
    flipped = differ.reshape(len(x), -1).any(1)
    threshold = np.broadcast_to(engine.layers[0].threshold, t_torch.shape)
    logits = trace[-1][1]
    agree = logits.argmax(1) == logits_torch.argmax(1)
    y = y_test.numpy()
    return {
        "test_images": int(x.shape[0]),
        "first_layer_units": int(states_torch.size),
        "first_layer_flips": int(differ.sum()),
        "flipped_units_max_distance_to_threshold": float(
            np.abs(t_torch - threshold)[differ].max() if differ.any() else 0.0
        ),
        "first_layer_median_abs_preactivation": float(np.median(np.abs(t_torch))),
        "examples_with_a_flip": int(flipped.sum()),
        "argmax_disagreements": int((~agree).sum()),
        "argmax_disagreements_without_a_flip": int((~agree & ~flipped).sum()),
        "max_abs_logit_diff_without_a_flip": float(np.abs(logits - logits_torch)[~flipped].max()),
        "accuracy_engine": float((logits.argmax(1) == y).mean()),
        "accuracy_torch": float((logits_torch.argmax(1) == y).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, one epoch")
    parser.add_argument("--parts", default="sizes,latency,fmnist")
    parser.add_argument("--checkpoint", help="a trained fmnist model.pt for the argmax check")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.worker:
            print(json.dumps(latency_worker(args.worker, args.reps, tmp)))
            return
        reps = 3 if args.quick else args.reps
        parts = args.parts.split(",")
        report = {"numpy": np.__version__, "torch": torch.__version__}
        if "sizes" in parts:
            report["sizes"] = sizes(tmp)
        if "latency" in parts:
            report["latency_ms"] = latency(reps, tmp)
        if "fmnist" in parts:
            report["fmnist"] = fmnist(args.checkpoint, args.quick, tmp)
        print(json.dumps(report, indent=2))
        if "latency_ms" in report:
            print(latency_table(report["latency_ms"]))


if __name__ == "__main__":
    main()
