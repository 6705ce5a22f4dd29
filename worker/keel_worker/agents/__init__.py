"""The worker side of agent episodes: an episode's chat calls rendered to token ids with the
policy's chat template, its completions parsed into tool calls, its turns recorded as the
token-exact sequences the trainer consumes, and the policy server that receives the calls the API
forwards. Nothing here knows the database.
"""
