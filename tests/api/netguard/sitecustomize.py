"""Loaded as `sitecustomize` into the fuzz test's server process only (tests/api/test_fuzz.py puts
this directory first on its PYTHONPATH): every name lookup and every TCP connection the server makes
must stay on this host. Schemathesis may create sites whose docker_host or kubeconfig names any
address and then run their connection checks; here those fail at once, as an unreachable engine
does, instead of sending traffic (or DNS queries) off the machine."""

from __future__ import annotations

import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refused(host) -> OSError:
    return ConnectionRefusedError(f"fuzz network guard: {host!r} is not on loopback")


def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        raise socket.gaierror(socket.EAI_NONAME, f"fuzz network guard: {host!r} is not on loopback")
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        raise _refused(address[0])
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        return 111  # ECONNREFUSED
    return _connect_ex(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
