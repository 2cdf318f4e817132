"""The gRPC floor for the benchmarks: a grpc.aio server that answers Router.Select with a canned
SelectResponse, in processes of its own (one, or several on one port like `serve --workers`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection

import grpc

from banditd.v1 import banditd_pb2 as pb


def _echo_handler(replies: dict[str, bytes]) -> grpc.GenericRpcHandler:
    """Router.Select answered with a canned response of the request's kind ("embedding" or
    "prompt"): no work, the floor (the request is decoded and the reply encoded, as the
    generated servicer does)."""
    canned = {k: pb.SelectResponse.FromString(v) for k, v in replies.items()}

    async def select(request: pb.SelectRequest, context: object) -> pb.SelectResponse:
        return canned[request.WhichOneof("context") or "embedding"]

    return grpc.method_handlers_generic_handler(
        "banditd.v1.Router",
        {
            "Select": grpc.unary_unary_rpc_method_handler(
                select,
                request_deserializer=pb.SelectRequest.FromString,
                response_serializer=pb.SelectResponse.SerializeToString,
            )
        },
    )


def _echo_main(replies: dict[str, bytes], port: int, conn: Connection) -> None:
    async def serve() -> None:
        # SO_REUSEPORT: the processes of one echo server share its port, as workers do.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((_echo_handler(replies),))
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        gc.collect()
        gc.freeze()  # as banditd serve does after its start
        conn.send(bound)
        await server.wait_for_termination()

    asyncio.run(serve())


@contextlib.contextmanager
def echo_server(replies: dict[str, bytes], processes: int = 1) -> Iterator[str]:
    """An echo server of ``processes`` processes on one port; yields its 127.0.0.1:PORT."""
    ctx = multiprocessing.get_context("spawn")  # no forked gRPC state
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        port = 0
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_echo_main, args=(replies, port, child), daemon=True)
            proc.start()
            procs.append(proc)
            if not parent.poll(60):
                raise RuntimeError("echo server did not start")
            port = int(parent.recv())
        yield f"127.0.0.1:{port}"
    finally:
        for started in procs:
            started.terminate()
        for started in procs:
            started.join(10)
