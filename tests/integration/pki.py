"""A throwaway PKI made with the openssl command line: a CA, server
certificates (good, for another name, expired, from another CA) and a
client CA with a client certificate for mutual TLS."""
import os
import subprocess

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
CA_CNF = """[ca]
default_ca = d
[d]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
[p]
commonName = supplied
"""


def _run(dir, *args):
    r = subprocess.run(["openssl", *args], cwd=dir, capture_output=True,
                       text=True)
    assert r.returncode == 0, f"openssl {' '.join(args)}:\n{r.stderr}"


def _ca(dir, name, cn):
    _run(dir, "req", "-x509", *EC, "-keyout", f"{name}.key", "-out",
         f"{name}.crt", "-days", "30", "-subj", f"/CN={cn}", "-addext",
         "basicConstraints=critical,CA:TRUE", "-addext",
         "keyUsage=critical,keyCertSign,cRLSign")


def _leaf(dir, ca, name, cn, sans, usage, start=None, end=None):
    _run(dir, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
         "-subj", f"/CN={cn}")
    with open(os.path.join(dir, f"{name}.ext"), "w") as f:
        if sans:
            f.write(f"subjectAltName={sans}\n")
        f.write(f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n")
    if start is None:
        _run(dir, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt",
             "-CAkey", f"{ca}.key", "-CAcreateserial", "-out", f"{name}.crt",
             "-days", "30", "-extfile", f"{name}.ext")
        return
    # OpenSSL 3.0's x509 cannot backdate; its ca command can.
    with open(os.path.join(dir, "ca.cnf"), "w") as f:
        f.write(CA_CNF)
    open(os.path.join(dir, "index.txt"), "w").close()
    with open(os.path.join(dir, "serial"), "w") as f:
        f.write("1000\n")
    _run(dir, "ca", "-batch", "-config", "ca.cnf", "-cert", f"{ca}.crt",
         "-keyfile", f"{ca}.key", "-in", f"{name}.csr", "-out",
         f"{name}.crt", "-startdate", start, "-enddate", end, "-extfile",
         f"{name}.ext", "-notext")


def make_pki(dir):
    """Returns a dict of file paths (PEM) under dir."""
    os.makedirs(dir, exist_ok=True)
    _ca(dir, "ca", "Tether Test CA")
    _ca(dir, "other-ca", "Another CA")
    _ca(dir, "client-ca", "Tether Test Client CA")
    _leaf(dir, "ca", "server", "localhost", "DNS:localhost,IP:127.0.0.1",
          "serverAuth")
    _leaf(dir, "ca", "wrong-name", "other.example", "DNS:other.example",
          "serverAuth")
    _leaf(dir, "ca", "expired", "localhost", "DNS:localhost,IP:127.0.0.1",
          "serverAuth", start="20200101000000Z", end="20200102000000Z")
    _leaf(dir, "other-ca", "untrusted", "localhost",
          "DNS:localhost,IP:127.0.0.1", "serverAuth")
    _leaf(dir, "client-ca", "client", "tether-client", None, "clientAuth")
    p = lambda n: os.path.join(dir, n)  # noqa: E731
    return {
        "ca": p("ca.crt"),
        "server": (p("server.crt"), p("server.key")),
        "wrong-name": (p("wrong-name.crt"), p("wrong-name.key")),
        "expired": (p("expired.crt"), p("expired.key")),
        "untrusted": (p("untrusted.crt"), p("untrusted.key")),
        "client-ca": p("client-ca.crt"),
        "client": (p("client.crt"), p("client.key")),
    }
