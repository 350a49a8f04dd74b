"""Thin HTTP handlers: parse, authenticate, hand over to gateway.service, answer."""
