"""Destinations: each turns identify calls into requests and reports one result per message."""
