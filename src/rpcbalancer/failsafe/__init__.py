"""What keeps a request alive when nodes are not: the circuit breaker of each node, the hedge's
timing, the retry budget that pays for hedges and retries, and the line for a free slot under
``node_concurrency``. Sans-IO but for the line (which waits on the loop); the forwarding
(:mod:`..proxy.forwarding`) applies them.
"""
