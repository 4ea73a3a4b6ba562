"""The transformers engine's decoding internals, below the HTTP layer and the `Engine` protocol: the continuous
batching scheduler (batcher.py) and what it runs on, the lean Llama-style forward pass (lean_decoder.py), its
preallocated key/value buffers (kv_slots.py) and its compiled decoding step (compiled_step.py)."""
