"""What the balancer knows of its nodes (sans-IO): node state, latency by load, the fleet's
exclusion rules, and the strategies that pick.
"""
