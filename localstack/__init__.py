"""The local AWS endpoint (moto's server, or a LocalStack already running) and its bootstrap."""
