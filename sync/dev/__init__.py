"""For trying audience-sync without a destination: the loopback receiver and the demo."""
