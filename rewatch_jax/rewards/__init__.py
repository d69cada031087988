"""Rewards and answer checking shared by RL and evaluation."""
