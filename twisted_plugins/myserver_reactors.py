"""
C{twistd -r myserver}: myserver's reactor (L{myserver.reactor}), which
myserver also installs by itself when twistd is given no C{--reactor}.
"""

from twisted.application.reactors import Reactor

myserver = Reactor(
    "myserver",
    "myserver.reactor",
    "epoll(7), calling myserver's connections without a legacy log context",
)
