"""Thin HTTP handlers: parse, call a service, render."""
