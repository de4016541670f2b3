#!/usr/bin/env python3
"""A tiny MCP server on stdio (newline-delimited JSON-RPC) for exec's tests.

Tools: `echo {text}` answers the text; `fail` answers an error result; `crash` exits the process
(exec must notice and start it again). Each start appends a line to $MCP_STARTS when set.
"""
import json
import os
import sys

TOOLS = [
    {
        "name": "echo",
        "description": "Answers its text.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
    {"name": "fail", "description": "Answers an error result.", "inputSchema": {"type": "object"}},
    {"name": "crash", "description": "Exits the server.", "inputSchema": {"type": "object"}},
]


def reply(message_id, result=None, error=None):
    message = {"jsonrpc": "2.0", "id": message_id}
    if error is not None:
        message["error"] = error
    else:
        message["result"] = result
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main():
    starts = os.environ.get("MCP_STARTS")
    if starts:
        with open(starts, "a") as log:
            log.write("start\n")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        message = json.loads(line)
        method = message.get("method")
        message_id = message.get("id")
        params = message.get("params") or {}
        if message_id is None:
            continue  # a notification
        if method == "initialize":
            reply(
                message_id,
                {
                    "protocolVersion": params.get("protocolVersion", "2024-11-05"),
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "exec-test-tools", "version": "1.0"},
                },
            )
        elif method == "ping":
            reply(message_id, {})
        elif method == "tools/list":
            reply(message_id, {"tools": TOOLS})
        elif method == "tools/call":
            name = params.get("name")
            arguments = params.get("arguments") or {}
            if name == "echo":
                reply(message_id, {"content": [{"type": "text", "text": arguments.get("text", "")}], "isError": False})
            elif name == "fail":
                reply(message_id, {"content": [{"type": "text", "text": "it failed"}], "isError": True})
            elif name == "crash":
                sys.exit(3)
            else:
                reply(message_id, error={"code": -32602, "message": "unknown tool " + str(name)})
        else:
            reply(message_id, error={"code": -32601, "message": "no method " + str(method)})


if __name__ == "__main__":
    main()
