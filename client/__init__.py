"""The SDK and the client commands: HTTP only, no torch, no server packages."""

from .aio import AsyncClient, AsyncJob
from .sdk import APIError, Client, Job
from .webhooks import WebhookVerificationError
from .webhooks import verify as verify_webhook

__all__ = ["APIError", "AsyncClient", "AsyncJob", "Client", "Job", "WebhookVerificationError", "verify_webhook"]
