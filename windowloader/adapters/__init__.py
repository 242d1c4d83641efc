"""Framework adapters: `windowloader.adapters.torch` and `windowloader.adapters.jax`.

Each converts the core's numpy batches at the edge and exposes the same factory names, so
switching frameworks is one import line.
"""
