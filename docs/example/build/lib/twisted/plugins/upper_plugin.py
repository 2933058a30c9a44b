"""
Publishes the upper protocol to myserver.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from myserver.interfaces import IProtocolPlugin


@implementer(IPlugin, IProtocolPlugin)
class UpperPlugin:
    name = "upper"
    description = "echo in upper case"

    def buildFactory(self, options):
        # Imported here, so that listing protocols stays cheap.
        from upper import buildFactory

        return buildFactory(options)


upper = UpperPlugin()
