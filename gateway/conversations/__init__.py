"""Stored Responses: conversation state owned by Farebox, so `previous_response_id` works
whichever deployment answers the next turn, on any replica.

`store.ResponseStore` saves, reads, deletes and purges stored responses in the ledger
database (the SQL is gateway.ledger.responses_repository); `items` gives stored items their
ids and shapes and pages the input_items list; `policy` says whether a request is stored.
Stored content is never logged.

May import: ledger, config, runtime, observability, errors.
"""
