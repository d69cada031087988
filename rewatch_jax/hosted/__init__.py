"""Hosted models: one client for any OpenAI-compatible endpoint (client.py), shared by the RL
judges, the evaluation judge and data synthesis."""

from rewatch_jax.hosted.client import ERROR_KINDS, ClientConfig, Completion, HostedClient, HostedError, Request

__all__ = ["ERROR_KINDS", "ClientConfig", "Completion", "HostedClient", "HostedError", "Request"]
