"""The worker side of agent episodes: an episode's chat calls rendered to token ids with the
policy's chat template, its completions parsed into tool calls, and its turns recorded as the
token-exact sequences the trainer consumes. Nothing here imports torch or talks HTTP.
"""
