"""Engines that build a sharded token cache on many machines: `ray.py` runs one Ray task per
shard. Each is imported only when asked for (`tokenize_corpus(..., engine="ray")`,
`windowloader prepare --engine ray`); the engine-free way is one `--shard i/N` run per job.
"""
