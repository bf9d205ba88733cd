"""Test and benchmark doubles that ship with the package (no model, no network beyond loopback)."""
from .judge_server import JudgeServer, LatencyModel

__all__ = ["JudgeServer", "LatencyModel"]
