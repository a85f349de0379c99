"""A seeded fake judge behind an OpenAI-compatible /v1/chat/completions, for exercising judge suites end to end
(sftjax-eval, sftjax-report's rubric table) where no real judge model is at hand. Its ratings are a seeded function
of the judge prompt (which holds the answer), so a run is reproducible; they say nothing about answer quality.

    .venv/bin/python bench/fake_judge.py --port 8011 --seed 0 &
    sftjax-eval ... eval=zhang eval.suites.rubric.judge.url=http://127.0.0.1:8011/v1 \
        eval.suites.rubric.judge.model=fake

It rates every criterion the prompt lists ("- name: description" lines) from 1 to 10 and answers MT-Bench style
"[[N]]" when the prompt asks for that form.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply(messages: list[dict], seed: int) -> str:
    prompt = messages[-1]["content"] if messages else ""
    rng = random.Random(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest())
    if "[[rating]]" in prompt:
        return f"Fake verdict. Rating: [[{rng.randint(1, 10)}]]"
    block = prompt.split("Rate each of these criteria:", 1)[-1].split("\n\n", 1)[0]
    names = re.findall(r"^- ([A-Za-z_][A-Za-z0-9_ -]*):", block, re.MULTILINE)
    return "Fake verdict.\n" + json.dumps({n: rng.randint(1, 10) for n in names})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = reply(body.get("messages", []), args.seed)
            data = json.dumps({"object": "chat.completion", "model": body.get("model", "fake"),
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"fake judge on http://{args.host}:{args.port}/v1 (seed {args.seed})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
