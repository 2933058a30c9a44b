"""
The twistd plugin: C{twistd -n myserver [options]}.

Only a lazy L{ServiceMaker} lives here; L{myserver.tap} is imported when
twistd actually runs myserver, so C{twistd --help} stays fast.
"""

from twisted.application.service import ServiceMaker

myserver = ServiceMaker(
    "myserver",
    "myserver.tap",
    "Pluggable TCP server (default: echo on tcp:27015)",
    "myserver",
)
