"""Adapter store service: serves PEFT LoRA adapters to GPU workers."""
