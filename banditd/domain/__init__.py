"""The domain: pure data, no I/O. Router specs (specs), what the flows produce and consume
(records), and the defaults and limits they are checked against (constants); budgets, upstreams,
request bounds and hard ceilings in their own modules. Everything above imports it; it imports
nothing above it (the import contracts in pyproject.toml).
"""

from banditd.domain import constants
from banditd.domain.constants import *  # noqa: F403 - the defaults and limits, all public
from banditd.domain.records import (
    Decision,
    FeedbackEvent,
    FloatArray,
    JoinRecord,
    RankedArm,
    ShadowPick,
    built_with,
    combined_reward,
    ranking_entry,
    record,
    signal_rule,
)
from banditd.domain.specs import (
    ArmSpec,
    BreakerConfig,
    RouterSpec,
    ShadowSpec,
    check_finite,
    check_name,
    spec_from_dict,
    spec_to_dict,
)

__all__ = [  # the constants (every upper-case name of domain.constants), then the rest
    *(name for name in vars(constants) if name.isupper()),
    "ArmSpec",
    "BreakerConfig",
    "Decision",
    "FeedbackEvent",
    "FloatArray",
    "JoinRecord",
    "RankedArm",
    "RouterSpec",
    "ShadowPick",
    "ShadowSpec",
    "built_with",
    "check_finite",
    "check_name",
    "combined_reward",
    "ranking_entry",
    "record",
    "signal_rule",
    "spec_from_dict",
    "spec_to_dict",
]
