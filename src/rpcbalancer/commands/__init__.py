"""The ``rpcbalancer`` command and what only it uses."""
