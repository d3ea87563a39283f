"""Seeing it work: counters and Prometheus metrics, the access and application logs, status
documents and the status page.
"""
