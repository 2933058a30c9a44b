# -*- test-case-name: tests.test_plugins -*-
"""
The contracts between myserver and the protocols it serves.

Public: this module and L{myserver.testing} are what plugin authors may
import; every other module of myserver is internal and may change in any
release (see docs/architecture.md).

A protocol plugin is a plain Twisted protocol plus a small descriptor object
that provides L{IProtocolPlugin} (and L{twisted.plugin.IPlugin}, so that
L{twisted.plugin.getPlugins} finds it in any C{twisted/plugins/} package on
the path).  The server, not the plugin, applies every cross-cutting rule to
the connections the plugin's factory serves: connection limits, timeouts,
write-buffer backpressure, half-close safety, accounting and graceful drain.
"""

from zope.interface import Attribute, Interface


class IProtocolPlugin(Interface):
    """
    A named protocol that myserver can serve on a listener.

    Plugins are found by name: C{--protocol NAME} or C{--listen
    NAME=ENDPOINT} on the command line, C{MYSERVER_PROTOCOL=NAME} in the
    environment, C{protocol = "NAME"} in the TOML file or in one of its
    C{[[listen]]} tables.  Every plugin found is checked with
    L{zope.interface.verify.verifyObject} at start-up; names must be unique.
    See docs/plugins.md for a complete example.
    """

    name = Attribute("Unique short name (str) by which operators select this protocol.")
    description = Attribute("One line (str) describing the protocol.")

    def buildFactory(options):  # type: ignore[no-untyped-def]
        """
        Build the protocol factory for one listener.

        Called once per listener at start-up, never per connection.

        @param options: The listener's own options: the C{[listen.options]}
            table of its C{[[listen]]} entry in the TOML file, or the
            C{--option KEY=VALUE} arguments that follow its C{--listen} on
            the command line (VALUE read as TOML, else as text), or an
            empty mapping.  Read-only.
        @type options: L{typing.Mapping} of L{str} to TOML values

        @return: an L{twisted.internet.interfaces.IProtocolFactory} whose
            protocols are plain Twisted protocols.  They may provide
            L{twisted.internet.interfaces.IHalfCloseableProtocol}; if they do
            not, the server finishes sending what they wrote and then closes
            the connection when the peer shuts down its sending side.

        @raise ValueError: if C{options} is not acceptable; the message is
            shown to the operator as a configuration error.
        """


class IDatagramPlugin(Interface):
    """
    A protocol plugin that also serves datagrams: C{udp:PORT} listeners.

    Provided beside L{IProtocolPlugin} by plugins whose protocol has a UDP
    form (echo, daytime and time do; chargen does not).  The server applies
    its per-source rate limit and its allow/deny networks before the
    protocol sees a datagram.
    """

    def buildDatagramProtocol(options):  # type: ignore[no-untyped-def]
        """
        Build the L{twisted.internet.protocol.DatagramProtocol} for one
        C{udp:} listener, given that listener's options (as for
        L{IProtocolPlugin.buildFactory}).

        @raise ValueError: if C{options} is not acceptable.
        """


class IReloadable(Interface):
    """
    Something that loaded material from disk at start-up (a TLS certificate
    and key, say) and can load it again when the server is told to reload
    (SIGHUP).
    """

    def reload():  # type: ignore[no-untyped-def]
        """
        Load the material again.  What is already in use (open connections)
        is untouched; what starts afterwards uses the new material.

        @raise Exception: if the new material is unusable; the old material
            then stays in force.
        """


class IHandshakePhase(Interface):
    """
    A protocol layer with a handshake before the protocol proper: the PROXY
    header, a TLS handshake, or a plugin's own (a login, a banner
    exchange).  The server closes a connection that has not finished every
    such layer within C{handshake_timeout} seconds of being accepted,
    counted with the reason C{handshake_timeout}.  The server finds the
    layers by following each protocol's C{wrappedProtocol}.
    """

    def handshakeFinished():  # type: ignore[no-untyped-def]
        """
        @return: whether this layer's handshake is over (a failed one
            closes the connection itself).
        """
