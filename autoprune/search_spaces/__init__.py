"""Search spaces: the coupled channel groups of a model and the policies that prune them."""

from autoprune.search_spaces.policy import Policy, PolicyError
from autoprune.search_spaces.space import GroupMember, GroupSpec, SearchSpace

__all__ = ["GroupMember", "GroupSpec", "Policy", "PolicyError", "SearchSpace"]
