# -*- test-case-name: tests.test_cli -*-
"""
myserver: a production TCP protocol server built on Twisted.

Echo (RFC 862) on tcp:27015 by default; other protocols plug in through
Twisted's plugin system (see L{myserver.interfaces.IProtocolPlugin}).
"""

__version__ = "0.1.0"
