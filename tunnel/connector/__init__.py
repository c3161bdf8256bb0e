"""The connector: dials the edge, serves tunnel streams against local origins."""
