"""Procedures shared by the CLI, the station and Python users (profile building and reuse,
evaluation set-up, dataset summaries, ...): the CLI parses, calls one of them, prints."""
