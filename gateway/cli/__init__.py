"""The `farebox` command (Typer): one module per command group (main, keys, drills,
reports, router). The only part of gateway that may import the simulator (for `farebox
demo`).
"""
