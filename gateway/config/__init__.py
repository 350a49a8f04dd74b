"""The routing YAML: schema (extra keys forbidden), loader with ${ENV} and line numbers,
cross-checks, fan-out rules and `farebox config explain`.

May import: routing (model types), providers' names, errors. Nothing with I/O beyond reading
the file.
"""
