"""The collector side: what the target is, its stacks, resources and agent data."""
