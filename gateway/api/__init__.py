"""Thin HTTP handlers: parse, authenticate, hand over to gateway.core.service, answer."""
