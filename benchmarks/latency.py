"""Latency of native retrieval vs generate-then-encode: see native_retriever/bench_latency.py and docs/performance.md.

Same as `native-retriever bench latency`; run from the repository root: python benchmarks/latency.py --help
"""

from native_retriever.bench_latency import main

if __name__ == "__main__":
    main()
