"""Protobuf <-> domain objects. Pure functions: no I/O, no state.

One module per kind of message: ``routers`` (RouterConfig <-> RouterSpec), ``select`` (the Select
path), ``feedback``, ``admin`` (statistics, evaluation) and ``budgets``; ``fields`` copies fields
of the same names. Callers use them through this package: ``codec.spec_from_proto(...)``.
"""

from banditd.edge.codec.admin import evaluation_to_proto, stats_to_proto
from banditd.edge.codec.budgets import (
    budget_from_proto,
    budget_to_proto,
    budget_usage_to_proto,
    spend_to_proto,
)
from banditd.edge.codec.feedback import (
    batch_outcome_to_proto,
    feedback_from_proto,
    feedback_to_proto,
)
from banditd.edge.codec.routers import (
    arm_from_proto,
    candidate_from_proto,
    shadow_from_proto,
    spec_from_proto,
    spec_to_proto,
    version_to_proto,
)
from banditd.edge.codec.select import decision_to_proto, select_from_proto

__all__ = [
    "arm_from_proto",
    "batch_outcome_to_proto",
    "budget_from_proto",
    "budget_to_proto",
    "budget_usage_to_proto",
    "candidate_from_proto",
    "decision_to_proto",
    "evaluation_to_proto",
    "feedback_from_proto",
    "feedback_to_proto",
    "select_from_proto",
    "shadow_from_proto",
    "spec_from_proto",
    "spec_to_proto",
    "spend_to_proto",
    "stats_to_proto",
    "version_to_proto",
]
