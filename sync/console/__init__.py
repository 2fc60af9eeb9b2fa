"""The web console (``audience-sync console``): pages and a JSON API over the state store."""
