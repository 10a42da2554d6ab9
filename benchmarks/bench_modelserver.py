"""Throughput of ``harstream modelserver`` through gRPC Predict, one client (sequential calls)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL_V1 = Path(__file__).resolve().parent.parent / "models" / "har" / "1"


def main(batch_sizes: tuple[int, ...] = (1, 64, 256), seconds: float = 3.0) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from services.modelserver.process import ModelServerProcess
    from services.modelserver.tensors import to_tensor_proto

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "har"
        shutil.copytree(MODEL_V1, base / "1")
        with (
            ModelServerProcess(base, log_path=Path(tmp) / "log") as server,
            grpc.insecure_channel(server.grpc_target) as channel,
        ):
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            print(f"model server {server.grpc_target}, one client, {os.cpu_count()} CPUs")
            for batch in batch_sizes:
                x = rng.normal(0, 0.3, (batch, 128, 9)).astype(np.float32)
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "har"
                request.inputs["window"].CopyFrom(to_tensor_proto(x))
                for _ in range(5):
                    stub.Predict(request, timeout=30)
                done, latencies = 0, []
                started = time.perf_counter()
                while time.perf_counter() - started < seconds:
                    t0 = time.perf_counter()
                    stub.Predict(request, timeout=30)
                    latencies.append(time.perf_counter() - t0)
                    done += batch
                rate = done / (time.perf_counter() - started)
                print(
                    f"  batch {batch:>4}: {rate:>9,.0f} windows/s   p50 "
                    f"{1000 * np.median(latencies):6.2f} ms/batch"
                )


if __name__ == "__main__":
    main()
