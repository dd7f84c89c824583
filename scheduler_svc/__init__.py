"""Chameleon CPU scheduler service."""
