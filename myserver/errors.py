# -*- test-case-name: tests.test_config,tests.test_cli -*-
"""
The errors that cross module boundaries, in a leaf module that imports
nothing of myserver, so that whoever raises one and whoever reports it can
both import it at top level.
"""


class ConfigError(Exception):
    """
    A setting is missing, malformed or out of range.  The message is one line
    fit to show an operator as C{myserver: error: MESSAGE}.
    """


class CannotListen(Exception):
    """
    A listener could not start; the message is one line for the operator.
    """
