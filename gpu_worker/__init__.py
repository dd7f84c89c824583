"""GPU worker service: model, paged KV cache, unified memory pool, adapter cache and engine loop."""
