"""The node side: the pooled keep-alive HTTP/1.1 client (the only code that talks to nodes), one
node connection, DNS expansion.
"""
