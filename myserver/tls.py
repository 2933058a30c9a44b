# -*- test-case-name: tests.test_tls -*-
"""
TLS listeners whose certificate can be replaced without a restart.

C{tlsreload:PORT:certKey=CERT.pem:privateKey=KEY.pem[:extraCertChainFile=CHAIN.pem]
[:interface=ADDR][:backlog=N][:minimumVersion=TLSv1_3]} takes the arguments
of Twisted's C{ssl:} (the key may sit in the certificate's file) and differs
in one way: on SIGHUP the server reads the files again.  New connections
then get the new certificate; open ones keep the session they have; a pair
that cannot be read, or whose key does not match its certificate, is
refused with an error and the old pair keeps serving.  TLS 1.2 is the
minimum unless C{minimumVersion} raises it.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL.SSL import Connection, Context
from twisted.internet.defer import Deferred, execute
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from myserver.interfaces import IHandshakePhase, IReloadable

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)
_VERSIONS = {"TLSv1_2": TLSVersion.TLSv1_2, "TLSv1_3": TLSVersion.TLSv1_3}


@implementer(IHandshakePhase)
class TimedHandshakeTLS(TLSMemoryBIOProtocol):
    """
    Twisted's TLS layer, saying when its handshake is over so that the
    server can hold it to C{handshake_timeout}.  Twisted publishes the end
    of a handshake only to a wrapped protocol that listens for it; its own
    C{_handshakeDone} flag is read here instead (checked to exist by
    C{tests.test_twistedcontract}).
    """

    def handshakeFinished(self) -> bool:
        return bool(self._handshakeDone)


class TimedHandshakeTLSFactory(TLSMemoryBIOFactory):
    """
    The factory C{ssl:} and C{tlsreload:} listeners wrap their protocol
    factory in, on guarded ports.
    """

    protocol = TimedHandshakeTLS


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or e}") from None


@implementer(IOpenSSLServerConnectionCreator, IReloadable)
class ReloadableTLS:
    """
    Server-side TLS settings built from files, and built again on reload.
    Each new connection takes the context in force when it starts.
    """

    def __init__(
        self,
        certKey: str,
        privateKey: str | None = None,
        extraCertChainFile: str | None = None,
        minimumVersion: str = "TLSv1_2",
    ) -> None:
        if minimumVersion not in _VERSIONS:
            raise ValueError(
                f"minimumVersion {minimumVersion!r}: expected TLSv1_2 or TLSv1_3"
            )
        self.certKey = certKey
        self.privateKey = privateKey or certKey
        self.extraCertChainFile = extraCertChainFile
        self.minimumVersion = _VERSIONS[minimumVersion]
        self.context: Context = self._load()

    def _load(self) -> Context:
        """
        Read and check the files, and build the context they describe.

        @raise ValueError: with one line saying what is wrong.
        """
        certificate = _read(self.certKey, "certificate")
        key = _read(self.privateKey, "private key")
        chain = []
        if self.extraCertChainFile:
            chainData = _read(self.extraCertChainFile, "certificate chain")
            chain = [
                Certificate.loadPEM(block).original
                for block in _PEM_CERTIFICATE.findall(chainData)
            ]
        try:
            pair = PrivateCertificate.loadPEM(certificate + b"\n" + key)
            options = CertificateOptions(
                privateKey=pair.privateKey.original,
                certificate=pair.original,
                extraCertChain=chain or None,
                raiseMinimumTo=self.minimumVersion,
            )
            context: Context = options.getContext()
        except Exception as e:
            detail = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(
                f"unusable certificate {self.certKey} with key {self.privateKey}: "
                f"{detail}"
            ) from None
        return context

    def reload(self) -> None:
        self.context = self._load()

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Connection:
        return Connection(self.context, None)


@implementer(IStreamServerEndpoint, IReloadable)
class TLSServerEndpoint:
    """
    Listens with C{reactor.listenSSL}, so that myserver's guarded ports
    carry the TLS connections, with a L{ReloadableTLS} as the context.
    """

    def __init__(
        self,
        reactor: Any,
        port: int,
        tls: ReloadableTLS,
        interface: str = "",
        backlog: int = 50,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.tls = tls
        self.interface = interface
        self.backlog = backlog

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return execute(
            self.reactor.listenSSL,
            self.port,
            protocolFactory,
            self.tls,
            backlog=self.backlog,
            interface=self.interface,
        )

    def reload(self) -> None:
        self.tls.reload()


def parseTLS(
    reactor: Any,
    port: str,
    certKey: str | None = None,
    privateKey: str | None = None,
    extraCertChainFile: str | None = None,
    interface: str = "",
    backlog: str = "50",
    minimumVersion: str = "TLSv1_2",
) -> TLSServerEndpoint:
    """
    The C{tlsreload:} endpoint string's arguments, as a L{TLSServerEndpoint}.

    @raise ValueError: for missing or unusable arguments and files.
    """
    if not certKey:
        raise ValueError("tlsreload: needs certKey=CERTIFICATE.pem")
    tls = ReloadableTLS(certKey, privateKey, extraCertChainFile, minimumVersion)
    return TLSServerEndpoint(reactor, int(port), tls, interface, int(backlog))
