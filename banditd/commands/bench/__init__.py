"""`banditd bench`: measurements, one module each.

kernels    per-call latency of the policy kernels against NumPy, MABWiser and Vowpal Wabbit
select     Select latency, one caller, against a grpc.aio echo server (the floor)
load       Select capacity of a server: open-loop multi-process gRPC load at a fixed rate
feedback   StreamFeedback and `ingest` events/s into Postgres, replica convergence time
context    encoder, PCA and kNN latency
gpu        kNN and MiniLM encoding throughput, GPU against CPU (docs/gpu.md)
"""

from __future__ import annotations

import argparse

from banditd.commands import reporting
from banditd.commands.bench import context, feedback, gpu, kernels, load, select


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bench` and its subcommands to a command's subparsers; parsed args carry func."""
    p_bench = subparsers.add_parser(
        "bench",
        help="measure the kernels, Select latency and capacity, feedback throughput, context "
        "and GPU",
    )
    bench_sub = p_bench.add_subparsers(
        dest="bench_command",
        metavar="{kernels,select,load,feedback,context,gpu}",
        required=True,
    )
    for module, help_text in (
        (
            kernels,
            "select/update latency and batch throughput vs NumPy, MABWiser and Vowpal Wabbit",
        ),
        (select, "Select latency, one caller, against a grpc.aio echo server in the same run"),
        (load, "Select capacity: open-loop gRPC load at a fixed rate, p50/p95/p99"),
        (feedback, "StreamFeedback and ingest events/s into Postgres, replica convergence p50/p99"),
        (context, "encoder latency (single and micro-batched), PCA and kNN latency"),
        (gpu, "kNN and MiniLM encoding throughput, GPU against CPU"),
    ):
        name = module.__name__.rpartition(".")[2]
        parser = reporting.add(
            bench_sub, name, help=help_text, description=module.__doc__, run=module.REPORT
        )
        module.add_arguments(parser)
