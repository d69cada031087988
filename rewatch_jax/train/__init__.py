"""Trainers: mesh, SFT, metrics."""
