"""The fast path, `/certify`: the micro-batcher and the surrogate's one-pass certificate."""
