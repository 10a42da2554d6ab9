"""``python -m benchmarks``: every benchmark, figures printed."""

from benchmarks import bench_model, bench_modelserver, bench_pipeline, bench_preprocess

if __name__ == "__main__":
    bench_preprocess.main()
    bench_model.main()
    bench_modelserver.main()
    bench_pipeline.main()
