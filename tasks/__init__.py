"""Thin Celery entry points: decode the message, call a service, map errors to retry/fail."""
