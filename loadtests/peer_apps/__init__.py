"""Servers of the same certificate on peer frameworks, for `loadtests.peers`."""
