"""Ray Serve system: ingress, expert worker actors, aggregator actor, HTTP API."""
