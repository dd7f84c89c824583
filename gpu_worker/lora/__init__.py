"""LoRA compute over adapters that sit in the unified pool.

rows.py       row tables, built once when an adapter is installed
metadata.py   per-step metadata (tokens sorted by adapter, segments, stacked row tables)
reference.py  the pure-torch reference ops (the kernels' signatures and semantics)
torch_batched.py  the batched torch path (CPU, and the fallback on GPU)
lora_shrink.py, lora_expand.py  the Triton kernels (imported only when used)
backend.py    `--lora-backend auto|torch|triton` and the per-step object the model calls
"""
