"""A fake Kaggle API for the tests: stdlib http.server on 127.0.0.1, a random free port.

It speaks what the kaggle client (2.2.x, kagglesdk) sends: JSON RPCs as POST [/api]/v1/<service>/<method>,
the upload PUT to the URL StartSubmissionUpload returned, and GETs of the files it points to. It records
every request and can be told to fail one RPC in turn with an HTTP status, a connection reset, or a hang.

Two ways to reach it: in-process, with kagglesdk's endpoint map patched to `.url`; or, for a CLI
subprocess, as the HTTP proxy for http://localhost (KAGGLE_API_ENVIRONMENT=LOCALHOST, HTTP_PROXY=`.url`).
"""
from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER = "fake-user"
KEY = "fake-legacy-key-3f9a8b7c6d5e4f30"
TOKEN = "KGAT_fake-access-token-0a1b2c3d4e5f"
BASIC = base64.b64encode(f"{USER}:{KEY}".encode()).decode()
MAX_REQUESTS = 100  # a client stuck in a loop gets 500s past this, and the test fails on the count
HANG_S = 3.0  # a "hang" answers nothing for this long (or until the server stops)


@dataclass
class Received:
    method: str
    rpc: str  # the RPC's method name, "PUT" for an upload, or "GET <path>"
    body: bytes
    authorization: str

    def json(self) -> dict:
        return json.loads(self.body or b"{}")


class FakeKaggle:
    def __init__(self) -> None:
        self.competition = "digit-recognizer"  # the one competition it knows
        self.data_zip = b""  # what DownloadDataFiles serves
        self.kernel_status = "COMPLETE"
        self.kernel_files: dict[str, bytes] = {}  # a kernel's output, by file name
        self.received: list[Received] = []
        self.uploads: dict[str, bytes] = {}  # upload token -> the bytes PUT there
        self.submissions: list[dict] = []  # what ListSubmissions answers, newest first
        self._faults: dict[str, list] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, rpc: str, *actions: int | str) -> None:
        """The next calls of rpc (a method name, or "PUT") get these, one each: an HTTP status, "reset"
        (the connection is closed with a TCP reset) or "hang" (no answer for HANG_S seconds)."""
        self._faults.setdefault(rpc, []).extend(actions)

    def calls(self, rpc: str) -> list[Received]:
        return [r for r in self.received if r.rpc == rpc]

    def __enter__(self) -> FakeKaggle:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ the RPCs

    def answer(self, rpc: str, body: dict, base: str, authorized: bool) -> tuple[int, dict, dict]:
        """(status, JSON reply, extra headers) for one RPC."""
        if rpc == "IntrospectToken":  # the client checks an access token this way before using it
            active = body.get("token") == TOKEN
            return 200, {"active": active, "username": USER if active else ""}, {}
        if not authorized:
            return 401, {"code": 401, "message": "Unauthenticated"}, {}
        name = body.get("competitionName")
        if name is not None and name != self.competition:
            return 404, {"code": 404, "message": f"Competition '{name}' not found"}, {}
        if rpc == "StartSubmissionUpload":
            token = f"blob-{len(self.uploads) + 1}"
            self.uploads[token] = b""
            return 200, {"token": token, "createUrl": f"{base}/upload/{token}"}, {}
        if rpc == "CreateSubmission":
            token = body.get("blobFileTokens")
            if not self.uploads.get(token):
                return 400, {"code": 400, "message": f"no file was uploaded for token {token}"}, {}
            ref = 50001 + len(self.submissions)
            self.submissions.insert(0, {"ref": ref, "date": "2025-01-02T03:04:05.000Z", "fileName": "submission.csv",
                                        "description": body.get("submissionDescription", ""), "status": "COMPLETE",
                                        "publicScore": "0.98765", "totalBytes": len(self.uploads[token])})
            return 200, {"message": "Successfully submitted to Digit Recognizer", "ref": ref}, {}
        if rpc == "ListSubmissions":
            return 200, {"submissions": self.submissions, "nextPageToken": ""}, {}
        if rpc == "DownloadDataFiles":  # Kaggle answers with a redirect to the archive
            return 302, {}, {"Location": f"{base}/files/{self.competition}.zip"}
        if rpc == "SaveKernel":
            slug = body.get("slug", "")
            return 200, {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}",
                         "versionNumber": len(self.calls("SaveKernel"))}, {}
        if rpc == "GetKernelSessionStatus":
            return 200, {"status": self.kernel_status, "failureMessage": ""}, {}
        if rpc == "ListKernelSessionOutput":
            files = [{"fileName": n, "url": f"{base}/files/output/{n}"} for n in self.kernel_files]
            return 200, {"files": files, "log": "[]", "nextPageToken": ""}, {}
        return 404, {"code": 404, "message": f"the fake has no RPC {rpc}"}, {}

    def file(self, path: str) -> bytes | None:
        if path == f"/files/{self.competition}.zip":
            return self.data_zip
        if path.startswith("/files/output/"):
            return self.kernel_files.get(path.removeprefix("/files/output/"))
        return None

    def next_fault(self, rpc: str) -> int | str | None:
        with self._lock:
            queue = self._faults.get(rpc)
            return queue.pop(0) if queue else None


def _handler_for(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            # as a proxy the request line carries the whole URL (http://localhost/api/v1/...)
            path = urllib.parse.urlsplit(self.path).path
            base = f"http://{self.headers.get('Host', '127.0.0.1')}"
            body = self._body()
            if self.command == "POST":
                rpc = path.rsplit("/", 1)[-1]
            else:
                rpc = "PUT" if self.command == "PUT" else f"GET {path}"
            auth = self.headers.get("Authorization", "")
            with fake._lock:
                fake.received.append(Received(self.command, rpc, body, auth))
                flooded = len(fake.received) > MAX_REQUESTS
            fault = 500 if flooded else fake.next_fault(rpc)
            if fault == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            if fault == "hang":
                fake._stop.wait(HANG_S)
                self.close_connection = True
                return
            if isinstance(fault, int):
                self._send(fault, json.dumps({"code": fault, "message": f"injected HTTP {fault}"}).encode())
                return
            if self.command == "PUT":
                token = path.rsplit("/", 1)[-1]
                if token not in fake.uploads:
                    self._send(404, b"{}")
                    return
                fake.uploads[token] = body
                self._send(200, b"{}")
                return
            if self.command == "GET":
                content = fake.file(path)
                if content is None:
                    self._send(404, b"not found", "text/plain")
                else:
                    self._send(200, content, "application/octet-stream")
                return
            authorized = auth in (f"Bearer {TOKEN}", f"Basic {BASIC}")
            status, reply, headers = fake.answer(rpc, json.loads(body or b"{}"), base, authorized)
            if status == 401:  # echo the credential, as some servers do, so the tests can check redaction
                reply["message"] += f": the credential in '{auth}' is not valid"
            self._send(status, json.dumps(reply).encode(), headers=headers)

        do_POST = do_PUT = do_GET = _handle

    return Handler
