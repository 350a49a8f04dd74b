"""The process: the uvicorn server subclass (graceful drain and shutdown) and SIGHUP config
reload across workers. The shutdown state every layer reads (drain, cut, what a cancelled
request records) and the readiness probe's database ping live in gateway.runtime.

The top of the import graph next to app and cli.
"""
