"""Sweeps: a grid of ICM runs (src/experiments/sweep.py), each cell an ordinary run directory."""
