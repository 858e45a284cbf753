"""Bridges to other pruning libraries (imported on demand: ``xprune.integrations.torch_pruning``)."""
