"""Known mistakes of exercises/kv_cache.py: KVCache, a model step on a cache and generate.
Each is the sentence a student reads when the numbers show it (the suite computes the
wrong values itself, from the reference)."""

PROMPT_RERUN = "the prompt is run again at every step: after the prefill, feed only the newest token"
NO_OFFSET = ("positions were not offset by the cache length: a cached step at position p must use "
             "position p (GPT: arange(cache.seq_len, cache.seq_len + s))")
WRONG_AXIS = "new keys/values are appended along the wrong axis: the sequence axis is dim 2 of (b, n_kv, s, d)"
KV_REPEATED = ("the cache holds n_heads key/value heads: store the n_kv_heads heads and repeat them "
               "after reading from the cache (that is the memory GQA saves)")
