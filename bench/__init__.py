"""Benchmark suite of the transfer-learning pipeline: ``python -m bench.run [--quick]`` (``make bench``).

``bench.run`` is the parent: it imports no TensorFlow, starts one child process per measured
workload (``bench.workloads``), reads each child's peak RSS, and prints and writes the results.
"""
