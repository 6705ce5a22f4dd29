"""The worker side of agent episodes."""
