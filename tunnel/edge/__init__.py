"""The edge: public HTTP listener, connector listener, admin API."""
