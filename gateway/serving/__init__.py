"""The process: the uvicorn server subclass (graceful drain and shutdown), SIGHUP config
reload across workers, the shutdown deadline, and the readiness probe's database ping.

The top of the import graph next to app and cli.
"""
