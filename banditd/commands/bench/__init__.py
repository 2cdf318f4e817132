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
    kernels.add_parser(bench_sub)
    select.add_parser(bench_sub)
    load.add_parser(bench_sub)
    feedback.add_parser(bench_sub)
    context.add_parser(bench_sub)
    gpu.add_parser(bench_sub)
