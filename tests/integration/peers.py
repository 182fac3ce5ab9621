"""Real third-party peers the integration tests run beside tether: nginx with
nchan, the npm packages pinned in tests/peers (better-sse, eventsource,
json-server, pouchdb-server) and openssl s_server. Each starts on loopback
in a test's own directory, is waited for with a bounded poll, and is
stopped by its own PID."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from conftest import SRC, wait_for

PEERS = os.path.join(SRC, "tests", "peers")
NODE_BIN = os.path.join(PEERS, "node_modules", ".bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Peer:
    """A process with its log in dir; stop() ends it."""

    def __init__(self, argv, cwd, name, env=None, stop_signal=signal.SIGTERM,
                 log_dir=None):
        self.name = name
        self.log_path = os.path.join(log_dir or cwd, f"{name}.log")
        self._log = open(self.log_path, "wb")
        full = dict(os.environ)
        full.update(env or {})
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=self._log, env=full,
                                     stdin=subprocess.DEVNULL)
        self.stop_signal = stop_signal
        self.port = None

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def alive(self):
        return self.proc.poll() is None

    def read_listening(self, timeout=30):
        """Reads the 'listening on HOST:PORT' line the peer prints."""
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"listening on "):
                self.port = int(line.split(b":")[-1])
                return self.port
            if not line and not self.alive():
                break
        raise AssertionError(f"{self.name} did not start: {line!r}\n"
                             f"{self.log()}")

    def wait_port(self, port, timeout=30):
        self.port = port
        wait_for(lambda: accepts(port) or not self.alive(), timeout,
                 f"{self.name} to accept on {port}")
        if not self.alive():
            raise AssertionError(f"{self.name} exited:\n{self.log()}")

    def stop(self):
        if self.alive():
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


def http(method, url, body=None, headers=None, timeout=10, context=None):
    """A small HTTP helper: returns (status, headers, body bytes)."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout,
                                    context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  nchan_max_reserved_memory 128M;
  server {{
    listen 127.0.0.1:{port}{ssl};
{tls}
    location ~ ^/sub/(\\w+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_subscriber_first_message {first};
      nchan_eventsource_ping_interval {ping};
    }}
    location ~ ^/pub/(\\w+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length {buffer};
      nchan_message_timeout 10m;
    }}
    location /static/ {{
      root {dir};
      default_type text/event-stream;
    }}
{extra}
  }}
}}
"""


class Nchan(Peer):
    """nginx + nchan: SSE pub/sub with Last-Event-ID replay."""

    def __init__(self, dir, buffer=100, first="oldest", ping=0, extra="",
                 tls=None):
        """tls: None, or a dict with cert, key and optionally client_ca
        (then a client certificate is required)."""
        os.makedirs(os.path.join(dir, "tmp"), exist_ok=True)
        port = free_port()
        conf = os.path.join(dir, "nginx.conf")
        tls_conf = ""
        if tls:
            tls_conf = (f"    ssl_certificate {tls['cert']};\n"
                        f"    ssl_certificate_key {tls['key']};\n"
                        "    ssl_protocols TLSv1.2 TLSv1.3;\n")
            if tls.get("client_ca"):
                tls_conf += (f"    ssl_client_certificate {tls['client_ca']};\n"
                             "    ssl_verify_client on;\n")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=dir, port=port, buffer=buffer,
                                      first=first, ping=ping, extra=extra,
                                      ssl=" ssl" if tls else "",
                                      tls=tls_conf))
        super().__init__(["nginx", "-p", dir + "/", "-c", conf, "-e",
                          os.path.join(dir, "error.log")], dir, "nginx",
                         stop_signal=signal.SIGQUIT)
        self.wait_port(port)
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.tls_base = f"https://localhost:{port}"

    def publish(self, channel, data, event=None, context=None):
        headers = {"Accept": "application/json"}
        if event:
            headers["X-EventSource-Event"] = event
        base = self.tls_base if context else self.base
        status, _, body = http("POST", f"{base}/pub/{channel}",
                               data.encode(), headers, context=context)
        assert status in (201, 202), (status, body)
        return json.loads(body)


def node_peer(script, dir, name, env=None):
    """Starts tests/peers/SCRIPT (it prints 'listening on HOST:PORT')."""
    p = Peer(["node", os.path.join(PEERS, script)], PEERS, name,
             env=dict(env or {}, PORT="0"), log_dir=dir)
    p.read_listening()
    return p
