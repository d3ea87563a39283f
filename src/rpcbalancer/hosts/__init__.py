"""The hosts that run the balancer: the standalone server, the ASGI app, AWS Lambda (and its
packager).
"""
