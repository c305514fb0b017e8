"""Local stand-ins for remote services the tests talk to over their real wire formats."""
