"""Models, rollout engines and Routing Replay mechanics (heavy imports live in the submodules)."""
