"""The dev model server through gRPC Predict: windows/s, latency per call and the server's own
CPU per window, for several batch sizes and TensorFlow thread settings side by side.

``python -m benchmarks.bench_modelserver`` (in ``make bench``) serves the stable model with
TensorFlow's own thread choice and with one thread per op (TF Serving's
``--tensorflow_intra_op_parallelism``, which the local pipeline sets to 1), alternated
``--repeats`` times in one run; figures are medians over the repeats. CPU is the server
process's utime + stime from ``/proc`` (all its threads) over the calls of one batch size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.capacity_stats import process_cpu_seconds

MODELS = Path(__file__).resolve().parent.parent / "models" / "har"
#: The version the pipeline serves as ``stable`` (deploy/tfserving/models.config).
STABLE_VERSION = 5


@dataclass(frozen=True)
class Figure:
    intra_op: int
    batch: int
    windows_per_s: float
    p50_ms: float
    cpu_us_per_window: float


def _measure(
    target: str, batch: int, seconds: float, clients: int, server_pid: int, intra_op: int
) -> Figure:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from services.modelserver.tensors import to_tensor_proto

    x = np.random.default_rng(batch).normal(0, 0.3, (batch, 128, 9)).astype(np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "har"
    request.inputs["window"].CopyFrom(to_tensor_proto(x))
    latencies: list[float] = []
    lock = threading.Lock()
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(5):
            stub.Predict(request, timeout=30)
        deadline = time.perf_counter() + seconds

        def client() -> None:
            own: list[float] = []
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                stub.Predict(request, timeout=30)
                own.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(own)

        cpu0, started = process_cpu_seconds(server_pid), time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed, cpu = time.perf_counter() - started, process_cpu_seconds(server_pid) - cpu0
    windows = len(latencies) * batch
    return Figure(
        intra_op=intra_op,
        batch=batch,
        windows_per_s=windows / elapsed,
        p50_ms=1000 * statistics.median(latencies),
        cpu_us_per_window=1e6 * cpu / windows,
    )


def run(
    version: int,
    batches: list[int],
    intra_ops: list[int],
    repeats: int,
    seconds: float,
    clients: int,
) -> list[Figure]:
    from services.modelserver.process import ModelServerProcess

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "har"
        shutil.copytree(MODELS / str(version), base / str(version))
        for repeat in range(repeats):
            for intra_op in intra_ops:
                env = {"HARSTREAM_MODELSERVER_TENSORFLOW_INTRA_OP_PARALLELISM": str(intra_op)}
                with ModelServerProcess(
                    base, log_path=Path(tmp) / f"log-{repeat}-{intra_op}", extra_env=env
                ) as server:
                    for batch in batches:
                        figure = _measure(
                            server.grpc_target, batch, seconds, clients, server.pid, intra_op
                        )
                        figures.append(figure)
                        print(
                            f"  round {repeat + 1}, intra-op {intra_op or 'TF'}: batch {batch:>3}"
                            f" {figure.windows_per_s:>8,.0f} windows/s, p50 {figure.p50_ms:6.2f}"
                            f" ms/call, server CPU {figure.cpu_us_per_window:6.0f} µs/window",
                            flush=True,
                        )
    return figures


def summarise(figures: list[Figure], batches: list[int], intra_ops: list[int]) -> None:
    print("medians (intra-op 0 = TensorFlow's choice, one thread per core):")
    print(
        f"  {'batch':>5} | "
        + " | ".join(f"intra-op {i}: windows/s, p50 ms, CPU µs/window" for i in intra_ops)
    )
    for batch in batches:
        cells = []
        for intra_op in intra_ops:
            mine = [f for f in figures if f.batch == batch and f.intra_op == intra_op]
            cells.append(
                f"{statistics.median(f.windows_per_s for f in mine):>8,.0f}, "
                f"{statistics.median(f.p50_ms for f in mine):6.2f}, "
                f"{statistics.median(f.cpu_us_per_window for f in mine):5.0f}"
            )
        print(f"  {batch:>5} | " + " | ".join(f"{c:<44}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_modelserver")
    parser.add_argument("--version", type=int, default=STABLE_VERSION, help="model version [5]")
    parser.add_argument("--batches", default="1,8,32,64", help="batch sizes [1,8,32,64]")
    parser.add_argument(
        "--intra-op", default="0,1", help="TensorFlow intra-op threads to compare (0: TF's) [0,1]"
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds [2]")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size [3]")
    parser.add_argument("--clients", type=int, default=1, help="concurrent callers [1]")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    batches = [int(b) for b in args.batches.split(",")]
    intra_ops = [int(i) for i in args.intra_op.split(",")]
    print(
        f"model server, model version {args.version}, {args.clients} client(s), "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    figures = run(args.version, batches, intra_ops, args.repeats, args.seconds, args.clients)
    summarise(figures, batches, intra_ops)


if __name__ == "__main__":
    main()
