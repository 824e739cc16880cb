"""Prefect tasks: thin wrappers around :mod:`lab` with retries, timeouts and caching on the
decorator, and the few helpers that submit them (sharded teacher inference, a round's clients,
noisy evaluation in chunks). Nothing here computes what a method is; nothing imports a flow."""
