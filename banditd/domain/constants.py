"""Defaults and limits of router configurations: the numbers specs are checked against."""

DEFAULT_EMBEDDING_DIM = 16
DEFAULT_FEEDBACK_TTL_SECONDS = 86_400
DEFAULT_PRIOR_OUTPUT_TOKENS = 300
# Prior (issue 18, tuned on the dev data): an arm in the middle of the router's price span
# starts at 0.7 (banditd.policy.priors spreads arms by price tier around it), worth 30
# observations, so an arm is judged by its feedback, not tried on the strength of optimism alone.
DEFAULT_PRIOR_QUALITY = 0.7
DEFAULT_PRIOR_WEIGHT = 30.0
DEFAULT_REWARD_WAIT_SECONDS = 3600
DEFAULT_FEEDBACK_CAP_WINDOW_SECONDS = 3600
DEFAULT_EXPLORATION = {"linucb": 0.6, "thompson": 0.5, "epsilon-greedy": 0.1}
# The policies a router may run, by name (their classes: banditd.policy.POLICIES, which also
# holds the replay-only knn).
ROUTER_POLICIES = tuple(DEFAULT_EXPLORATION)
MAX_EMBEDDING_DIM = 4096
MAX_ARMS = 256
MAX_EXPLORE_NEW_ARM = 10_000
COMBINE_RULES = ("first", "last", "mean")  # how several signals for one decision combine
MAX_SIGNALS_PER_DECISION = 16  # under "last" / "mean": a bound on one decision's signals
MAX_SHADOWS = 4  # bounds the extra work a Select does for shadow policies
MAX_BREAKER_MIN_EVENTS = 10_000
MAX_BREAKER_COOLDOWN_SECONDS = 86_400
# Context features (banditd.context): text encoders by name, request metadata, PCA, kNN.
ENCODERS = ("hashing", "minilm", "minilm-static")
ENCODER_DIMS = {"minilm": 384, "minilm-static": 256}  # fixed output sizes; hashing: any
DEFAULT_METADATA_SLOTS = 64
MAX_METADATA_KEYS = 16
MAX_METADATA_SLOTS = 1024
MAX_KNN_K = 256
DEFAULT_PCA_FIT_SAMPLES = 256
# Arm health (banditd.state.breaker): a router's breaker settings by default.
DEFAULT_ERROR_RATE = 0.5
DEFAULT_MIN_EVENTS = 20
DEFAULT_COOLDOWN_SECONDS = 30
