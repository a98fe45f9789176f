"""Analyses passes share: dependency groups, FLOPs, quantization regions, sensitivity."""
