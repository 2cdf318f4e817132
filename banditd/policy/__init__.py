"""Policies: a name -> class registry over one small interface (see base.Policy)."""

from banditd.policy.base import Choice, Policy
from banditd.policy.epsilon_greedy import EpsilonGreedy
from banditd.policy.knn import KNN
from banditd.policy.linucb import LinUCB
from banditd.policy.thompson import Thompson

# Every policy, by name: the ones a router runs (banditd.domain.ROUTER_POLICIES), then knn
# (replay only).
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (LinUCB, Thompson, EpsilonGreedy, KNN)
}


def make_policy(name: str, exploration: float) -> Policy:
    return POLICIES[name](exploration)


__all__ = [
    "KNN",
    "POLICIES",
    "Choice",
    "EpsilonGreedy",
    "LinUCB",
    "Policy",
    "Thompson",
    "make_policy",
]
