"""A local Kubernetes for integration tests: the API emulator, a test kubelet and a kopf runner.

The fixtures that put them together are in tests/fixtures/cluster.py.
"""
