"""A tiny OpenAI-compatible chat server (stdlib only) for tests: `python fake_openai_server.py PORT LOG [options]`.

Serves GET /v1/models (one model, "m") and POST /v1/chat/completions, answering each request with
n choices "echo: <prompt> #i", where <prompt> is its messages as "role: content | role: content".
Every request's <prompt> is appended to LOG as JSON lines {"event": "request"|"answered", "prompt": ...}. Options:
  --die-after N     exit (os._exit) when request N+1 arrives, without answering it
  --status CODE     answer every chat request with this HTTP status and --message (an OpenAI error body)
  --slow-first S    answer the first chat request only after S seconds (the others at once)
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("log")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--status", type=int)
    parser.add_argument("--message", default="refused")
    parser.add_argument("--slow-first", type=float)
    args = parser.parse_args()
    lock = threading.Lock()
    seen = [0]

    def log(event: str, prompt: str) -> None:
        with lock, open(args.log, "a") as fh:
            fh.write(json.dumps({"event": event, "prompt": prompt}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_) -> None:
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "test"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            messages = body.get("messages", [])
            prompt = " | ".join(f"{m['role']}: {m['content']}" for m in messages)
            with lock:
                seen[0] += 1
                count = seen[0]
            if args.die_after is not None and count > args.die_after:
                os._exit(0)
            log("request", prompt)
            if args.status is not None:
                self._send(args.status, {"error": {"message": args.message, "type": "invalid_request_error", "code": args.status}})
                return
            if args.slow_first and count == 1:
                time.sleep(args.slow_first)
            n = int(body.get("n") or 1)
            choices = [
                {"index": i, "message": {"role": "assistant", "content": f"echo: {prompt} #{i}"}, "finish_reason": "stop"}
                for i in range(n)
            ]
            usage = {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}
            log("answered", prompt)  # before the answer: a client that got it can only have been logged
            self._send(200, {"id": f"c{count}", "object": "chat.completion", "created": 0, "model": "m", "choices": choices, "usage": usage})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
