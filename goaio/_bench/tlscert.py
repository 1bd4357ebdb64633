"""The bench's TLS certificate: a self-signed RSA 2048 certificate for
``localhost`` / 127.0.0.1 (the key type of the yardstick the issue's targets
were measured with), made once with the ``openssl`` command into the bench's
cache directory (see native.py) and reused.

:func:`ensure` returns ``(certfile, keyfile)``, or None and :func:`why_not`
says why (no ``openssl`` command, or it failed). The tests make their own.
"""

import os
import shutil
import subprocess
import tempfile

from . import native

NAME = "bench-localhost-rsa2048"
_why = []


def why_not():
    return _why[-1] if _why else None


def make(directory, name=NAME, days=3650):
    """Writes ``name``-cert.pem and ``name``-key.pem into ``directory``;
    returns their paths. Raises OSError / CalledProcessError."""
    exe = shutil.which("openssl")
    if exe is None:
        raise FileNotFoundError("no openssl command to make the bench's certificate")
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, name + "-cert.pem")
    key = os.path.join(directory, name + "-key.pem")
    tmp = tempfile.mkdtemp(prefix="cert-", dir=directory)
    try:
        tcert, tkey = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run([exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", tkey, "-out", tcert], check=True, capture_output=True, timeout=60)
        os.replace(tkey, key)  # key first: a cert on disk always has its key
        os.replace(tcert, cert)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cert, key


def ensure():
    """(certfile, keyfile) of the bench's certificate, made if missing; or None."""
    directory = native.cache_dir()
    cert = os.path.join(directory, NAME + "-cert.pem")
    key = os.path.join(directory, NAME + "-key.pem")
    if os.path.isfile(cert) and os.path.isfile(key):
        return cert, key
    try:
        return make(directory)
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", None)
        _why.append(f"cannot make a TLS certificate: {exc}"
                    + (f": {err.decode(errors='replace').strip()[-300:]}" if err else ""))
        return None
