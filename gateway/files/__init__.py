"""Uploaded files (`/v1/files`): owns the files clients upload, their bytes (a storage backend,
gateway/files/storage.py) and their metadata (the ledger's `files` table), and the checks an
upload must pass (size; for purpose `batch`, every JSONL line). The Batch API reads its input
files from here.
"""
