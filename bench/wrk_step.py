"""Closed-loop steps driven by wrk over HTTPS keep-alive, with a generated Lua script."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bodies import PLACEHOLDER

RESULT_PREFIX = "BENCH_JSON "

# Each thread loads the templates, splits them at the placeholder, and builds every
# request with a fresh uid (run id, thread id, counter). response() takes the uid
# the server echoed in a 200 body, so the acknowledged set needs no per-connection
# bookkeeping. done() collects the threads' tables, writes the uids one per line
# and prints the figures as one JSON line.
LUA_TEMPLATE = r"""
local templates_path = %(templates)s
local acked_path = %(acked)s
local run_id = %(run_id)s
local placeholder = %(placeholder)s
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function split(text)
  local parts, start = {}, 1
  while true do
    local first, last = string.find(text, placeholder, start, true)
    if not first then
      table.insert(parts, string.sub(text, start))
      return parts
    end
    table.insert(parts, string.sub(text, start, first - 1))
    start = last + 1
  end
end

function init(args)
  templates = {}
  for line in io.lines(templates_path) do
    if #line > 0 then table.insert(templates, split(line)) end
  end
  counter = 0
  acked = {}
  non200 = 0
  closes = 0
  keepalives = 0
  headers = {["Content-Type"] = "application/json"}
end

function request()
  counter = counter + 1
  local uid = "bench-" .. run_id .. "-" .. tid .. "-" .. counter
  local parts = templates[(counter %% #templates) + 1]
  return wrk.format("POST", "/log-request", headers, table.concat(parts, uid))
end

function response(status, hdrs, body)
  local connection = hdrs["Connection"] or hdrs["connection"] or ""
  connection = string.lower(connection)
  if connection == "close" then closes = closes + 1 end
  if connection == "keep-alive" then keepalives = keepalives + 1 end
  if status == 200 then
    local uid = string.match(body, '"uid":"([^"]+)"')
    if uid then acked[#acked + 1] = uid end
  else
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(acked_path, "w"))
  local total_acked, total_non200, total_closes, total_keepalives = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    local list = thread:get("acked")
    for i = 1, #list do out:write(list[i], "\n") end
    total_acked = total_acked + #list
    total_non200 = total_non200 + thread:get("non200")
    total_closes = total_closes + thread:get("closes")
    total_keepalives = total_keepalives + thread:get("keepalives")
  end
  out:close()
  local e = summary.errors
  io.write(string.format(
    '%(prefix)s{"requests":%%d,"duration_us":%%d,"rps":%%.1f,"p50_us":%%d,"p99_us":%%d,' ..
    '"p999_us":%%d,"max_us":%%d,"non2xx":%%d,"script_non200":%%d,"acked":%%d,"closes":%%d,' ..
    '"keepalives":%%d,' ..
    '"connect_errors":%%d,"read_errors":%%d,"write_errors":%%d,"timeouts":%%d}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.status, total_non200, total_acked, total_closes, total_keepalives,
    e.connect, e.read, e.write, e.timeout))
end
"""


def lua_string(text: str) -> str:
    """A Lua string literal (JSON escapes for these ASCII paths and ids are valid Lua)."""
    return json.dumps(text)


def write_script(folder: Path, templates: list[str], run_id: str) -> tuple[Path, Path]:
    templates_path = folder / f"templates-{run_id}.txt"
    templates_path.write_text("\n".join(templates) + "\n", encoding="utf-8")
    acked_path = folder / f"acked-{run_id}.txt"
    script = LUA_TEMPLATE % {
        "templates": lua_string(str(templates_path)),
        "acked": lua_string(str(acked_path)),
        "run_id": lua_string(run_id),
        "placeholder": lua_string(PLACEHOLDER),
        "prefix": RESULT_PREFIX,
    }
    script_path = folder / f"bench-{run_id}.lua"
    script_path.write_text(script, encoding="utf-8")
    return script_path, acked_path


@dataclass(frozen=True)
class WrkResult:
    figures: dict[str, Any]
    acked: list[str]
    raw_output: str


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    port: int, script: Path, acked_path: Path, connections: int, duration: float, timeout: float
) -> WrkResult:
    threads = 1 if connections == 1 else 2
    argv = [
        wrk_path() or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        str(script),
        f"https://127.0.0.1:{port}/log-request",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{output}")
    figures = _parse_figures(output)
    acked = acked_path.read_text(encoding="ascii").split()
    return WrkResult(figures, acked, output)


def _parse_figures(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            figures: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return figures
    raise RuntimeError(f"wrk printed no result line:\n{output}")
