"""Rewards and answer checking shared by RL and evaluation: the answer parser (answers.py), accuracy
by answer type (accuracy.py), ReWatch's format check (format.py), the judges (judges.py) and the
acc+fmt / O&R reward (o_and_r.py)."""

from rewatch_jax.rewards.accuracy import accuracy, score_answer
from rewatch_jax.rewards.answers import parse_answer
from rewatch_jax.rewards.format import Step, Trace, check_format
from rewatch_jax.rewards.judges import CaptionJudge, HostedJudge, Item, Judge
from rewatch_jax.rewards.o_and_r import RewardConfig, Sample, reward

__all__ = ["CaptionJudge", "HostedJudge", "Item", "Judge", "RewardConfig", "Sample", "Step", "Trace", "accuracy",
           "check_format", "parse_answer", "reward", "score_answer"]
