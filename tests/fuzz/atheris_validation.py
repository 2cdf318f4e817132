"""Coverage-guided fuzzing (atheris) of request decoding and validation, in process.

Bytes -> SelectRequest / FeedbackRequest / RouterConfig -> the same codec and checks the server
runs. Anything but success or a banditd error (which the edge maps to a status code) is a crash.
Run: python tests/fuzz/atheris_validation.py -runs=200000 (tests/test_fuzz.py does, bounded).
"""

from __future__ import annotations

import sys

import atheris
import numpy as np

with atheris.instrument_imports(include=["banditd"]):
    from google.protobuf.message import DecodeError

    from banditd import codec
    from banditd.context import build_x
    from banditd.domain import ArmSpec, RouterSpec
    from banditd.errors import BanditdError
    from banditd.learner import Learner
    from banditd.token import TokenClaims, TokenSigner
    from banditd.v1 import banditd_pb2 as pb

SPEC = RouterSpec(
    "acme", "chat", (ArmSpec("cheap", 0.1, 0.4), ArmSpec("strong", 3, 15)), embedding_dim=4
)
SIGNER = TokenSigner(b"fuzzing-key-0123456789")
TOKEN = SIGNER.sign(TokenClaims("d-1", "acme", 1, "cheap", np.ones(5), 1.0, 0.001, 2e9))
LEARNER = Learner(catalog=None, signer=SIGNER, clock=lambda: 1e9)  # type: ignore[arg-type]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 2)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if which == 0:
            req = codec.select_from_proto(pb.SelectRequest.FromString(body))
            build_x(SPEC, prompt=req.prompt, embedding=req.embedding, max_prompt_chars=1000)
        elif which == 1:
            msg = pb.FeedbackRequest.FromString(body)
            if msg.decision_id == "t":  # let the fuzzer reach the checks behind the signature
                msg.decision_id = TOKEN
            LEARNER.event_of(codec.feedback_from_proto(msg))
        else:
            codec.spec_from_proto(pb.RouterConfig.FromString(body))
    except (DecodeError, BanditdError):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
