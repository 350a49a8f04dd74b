"""The quality router at serve time (scoring a prompt with the shipped model, loading it),
plus the offline tooling that trains, evaluates and plots it (train, dataset, plot), which
serving code never imports (an import-linter contract says so).
"""
