"""The SDK and the client commands: HTTP only, no torch, no server packages."""

from .sdk import APIError, Client, Job

__all__ = ["APIError", "Client", "Job"]
