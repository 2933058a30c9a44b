# -*- test-case-name: tests.test_core,tests.test_limits -*-
"""
The one owner of accepting: which listening ports accept new connections
now, from the room left under the server's C{max_connections} and each
listener's own cap, and from the output budget (none while overloaded).

Everything that changes the room reports here and nowhere else: the guard
when a connection opens or closes (L{AcceptGate.opened},
L{AcceptGate.closed}), a SIGHUP reconfiguration when limits change
(L{AcceptGate.reconsider}), the output budget when it becomes overloaded
and when it no longer is (L{myserver.budget}).  Ports only ask how much room there is
(L{AcceptGate.room}) and do what they are told through L{IAcceptingPort}.
At the limit the ports stop reading their listening sockets, so new clients
wait in the kernel's backlog instead of being refused.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

from myserver.budget import OVERLOADED, OutputBudget
from myserver.registry import ConnectionRegistry


class IAcceptingPort(Interface):
    """
    A listening port that can be told to stop and resume accepting.
    """

    def pauseAccepting() -> None:
        """
        Accept nothing until L{resumeAccepting}; clients wait in the backlog.
        """

    def resumeAccepting() -> None:
        """
        Accept again, unless the port is stopping or backing off from an
        accept error (it then resumes by itself when the back-off ends).
        """


class ILimitedListener(Interface):
    """
    What the gate reads of one listener (a L{myserver.policy.Guard}).
    """

    maxConnections = Attribute("This listener's own cap, or 0 for none.")
    connections = Attribute("The listener's open connections (a sized set).")


class AcceptGate:
    """
    Decides, for every listening port, whether it accepts.

    @ivar maxConnections: the server's total cap on open connections.
    @ivar registry: where the total count is kept.
    """

    def __init__(
        self,
        registry: ConnectionRegistry,
        maxConnections: int,
        budget: OutputBudget | None = None,
    ) -> None:
        self.registry = registry
        self.maxConnections = maxConnections
        self.budget = budget or OutputBudget(registry, 0)
        self.budget.observers.append(self._budgetStateChanged)
        self._ports: dict[ILimitedListener, set[IAcceptingPort]] = {}

    def _budgetStateChanged(self, state: str) -> None:
        """
        Over the output budget no port accepts; below it again, those with
        room resume.
        """
        if state == OVERLOADED:
            for ports in self._ports.values():
                for port in ports:
                    port.pauseAccepting()
        else:
            self.reconsider()

    def room(self, listener: ILimitedListener) -> int:
        """
        How many more connections C{listener} may accept now: the smaller
        of the server's room and the listener's own.
        """
        if self.budget.state == OVERLOADED:
            return 0
        # The registry's set itself, here and below: its __len__ is one
        # more Python call per connection.
        room = self.maxConnections - len(self.registry.connections)
        if listener.maxConnections:
            room = min(room, listener.maxConnections - len(listener.connections))
        return room

    def portStarted(self, listener: ILimitedListener, port: IAcceptingPort) -> None:
        self._ports.setdefault(listener, set()).add(port)

    def portStopped(self, listener: ILimitedListener, port: IAcceptingPort) -> None:
        ports = self._ports.get(listener)
        if ports is not None:
            ports.discard(port)
            if not ports:
                del self._ports[listener]

    def opened(self, listener: ILimitedListener) -> None:
        """
        A connection of C{listener} opened: at the server's limit every port
        pauses, at the listener's own limit its ports do.
        """
        if len(self.registry.connections) >= self.maxConnections:
            for ports in self._ports.values():
                for port in ports:
                    port.pauseAccepting()
        elif listener.maxConnections and (
            len(listener.connections) >= listener.maxConnections
        ):
            for port in self._ports.get(listener, ()):
                port.pauseAccepting()

    def closed(self, listener: ILimitedListener) -> None:
        """
        A connection of C{listener} closed: if that made room where there was
        none, the ports that may now accept resume.
        """
        if len(self.registry.connections) == self.maxConnections - 1:
            self.reconsider()
        elif self.budget.state == OVERLOADED:
            return
        elif listener.maxConnections and (
            len(listener.connections) == listener.maxConnections - 1
        ):
            for port in list(self._ports.get(listener, ())):
                port.resumeAccepting()

    def reconsider(self) -> None:
        """
        Limits changed (or room freed up at the server's limit): every port
        with room resumes, every port without pauses.
        """
        for listener, ports in list(self._ports.items()):
            hasRoom = self.room(listener) > 0
            for port in list(ports):
                if hasRoom:
                    port.resumeAccepting()
                else:
                    port.pauseAccepting()
