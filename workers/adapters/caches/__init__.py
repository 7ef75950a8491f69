"""Prediction cache adapters."""
