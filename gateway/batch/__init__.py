"""The Batch API: batches, their runner and the three ways a batch runs."""
