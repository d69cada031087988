"""Evaluation: accuracy on prepared prompt sets (accuracy.py), the video ablations that show what a
model takes from the video (ablations.py), and the results table (report.py). Benchmark adapters
will live here."""

from rewatch_jax.evaluation import report
from rewatch_jax.evaluation.ablations import ABLATIONS, blank_videos, swap_videos
from rewatch_jax.evaluation.accuracy import check_batch, evaluate

__all__ = ["ABLATIONS", "blank_videos", "swap_videos", "check_batch", "evaluate", "report"]
