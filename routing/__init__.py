"""Pure routing decisions: no I/O, no clock, no randomness unless passed in."""
