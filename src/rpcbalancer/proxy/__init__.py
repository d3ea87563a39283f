"""The client side: the HTTP/1.1 server protocol, and the one way every request takes through
the gateway (admission, plan, cache, coalesce, route, answer, account, learn), the router and
its forwardings, and what admission uses (access rules, rate limits, the client address).
"""
