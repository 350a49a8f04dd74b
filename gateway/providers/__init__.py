"""Upstream adapters: one interface, one implementation per wire protocol."""
