"""The client side: the HTTP/1.1 server protocol, the gateway (admission, dispatch, accounting),
the router and its forwardings, and what admission uses (access rules, rate limits, the client
address).
"""
